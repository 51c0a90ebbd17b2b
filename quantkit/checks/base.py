"""The interface every validation check implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantkit.checks.serve import ServeSettings
    from quantkit.runtimes.base import DomainScores


@dataclass
class CheckContext:
    """What a check may look at for one evaluated target."""

    scores: "list[DomainScores]"
    target_path: Path  # compressed-tensors folder or GGUF file
    base_path: Path  # the float base folder
    format: str
    tasks: list[str] = field(default_factory=list)
    task_limit: int | None = None
    runtime_unavailable: str | None = None  # why the format's runtime could not score this target
    serve: "ServeSettings | None" = None  # the vLLM serving check; None: not requested
    name: str = ""  # the target's name (one artifact, or one GGUF type)
    log_dir: Path | None = None  # where a check may keep logs (inside the artifact folder)


@dataclass
class CheckResult:
    check: str
    status: str  # "measured" | "skipped" | "failed" (could not run the artifact: its gates fail) | "unsupported" (not runnable on this machine)
    metrics: dict = field(default_factory=dict)  # gate keys -> worst value over domains
    per_domain: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)  # sample sizes behind the numbers
    reason: str | None = None  # why it was skipped, or why it failed
    details: dict = field(default_factory=dict)  # check-specific record (e.g. the serving report)

    def to_dict(self) -> dict:
        return asdict(self)


class Check(ABC):
    """One check. Register an instance in `quantkit.checks.CHECKS`."""

    name: str

    @abstractmethod
    def run(self, ctx: CheckContext) -> CheckResult: ...
