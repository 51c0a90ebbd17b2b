"""The interface every validation check implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantkit.artifact import Target
    from quantkit.runtimes.base import DomainScores


@dataclass
class CheckContext:
    """One evaluated target: what it is and what its runtime measured. Options of a check are the
    check's own (its constructor), not the context's."""

    target: "Target"
    scores: "list[DomainScores]"
    base_path: Path  # the float base folder
    base_fingerprint: str  # its content fingerprint (the key of results cached per base)
    runtime_unavailable: str | None = None  # why the format's runtime could not score this target
    log_dir: Path | None = None  # where a check may keep logs (inside the artifact folder)


@dataclass
class CheckResult:
    check: str
    # "measured" | "skipped" | "failed" (could not run the artifact: its gates fail)
    # | "unsupported" (this machine cannot run it)
    status: str
    metrics: dict = field(default_factory=dict)  # gate keys -> worst value over domains
    per_domain: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)  # sample sizes behind the numbers
    reason: str | None = None  # why it was skipped, or why it failed
    details: dict = field(default_factory=dict)  # check-specific record (e.g. the serving report)

    def to_dict(self) -> dict:
        return asdict(self)


class Check(ABC):
    """One check, built per run with its options (keyword arguments of its constructor, which
    `quantkit.checks.build_checks` passes by name). Register the class in `quantkit.checks.CHECKS`."""

    name: str

    @abstractmethod
    def run(self, ctx: CheckContext) -> CheckResult: ...

    def default_gates(self, target: "Target", result: CheckResult) -> dict[str, float]:
        """This check's gates for `target` before recipe gates and --gate overrides (none by default)."""
        return {}
