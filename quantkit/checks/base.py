"""The interface every validation check implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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


@dataclass
class CheckResult:
    check: str
    status: str  # "measured" | "skipped"
    metrics: dict = field(default_factory=dict)  # gate keys -> worst value over domains
    per_domain: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)  # sample sizes behind the numbers
    reason: str | None = None  # why it was skipped

    def to_dict(self) -> dict:
        return asdict(self)


class Check(ABC):
    """One check. Register an instance in `quantkit.checks.CHECKS`."""

    name: str

    @abstractmethod
    def run(self, ctx: CheckContext) -> CheckResult: ...
