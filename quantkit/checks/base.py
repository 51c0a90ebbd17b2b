"""The interface every validation check implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantkit.runtimes.base import DomainScores


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
    def run(self, scores: "list[DomainScores]") -> CheckResult: ...
