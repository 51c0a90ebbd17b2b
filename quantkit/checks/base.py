"""The interface every validation check implements: how it runs, its default gates, and how its results
read in the reports (validation.md, validation.html, the terminal, the model card). The renderers in
quantkit.report ask every registered check for its part and never name one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from quantkit.report.model import CardResult, CheckResult, EvaluatedTarget, Section, ValidationReport

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


class Check(ABC):
    """One check, built per run with its options (keyword arguments of its constructor, which
    `quantkit.checks.build_checks` passes by name). Register the class in `quantkit.checks.CHECKS`.

    The class methods below read a report (written now or pushed long ago), not a run: they need no options."""

    name: str

    @abstractmethod
    def run(self, ctx: CheckContext) -> CheckResult: ...

    def default_gates(self, target: "Target", result: CheckResult) -> dict[str, float]:
        """This check's gates for `target` before recipe gates and --gate overrides (none by default)."""
        return {}

    @classmethod
    def run_section(cls, report: ValidationReport) -> Section | None:
        """Its table in validation.md, validation.html and `quantkit validate`'s output (None or no rows: none)."""
        return None

    @classmethod
    def card_section(cls, report: ValidationReport) -> Section | None:
        """Its table in the Evaluation part of the pushed model card (None or no rows: none)."""
        return None

    @classmethod
    def card_results(cls, target: EvaluatedTarget, result: CheckResult) -> list[CardResult]:
        """Its figures in the card's model-index (Hugging Face eval results) for one target."""
        return []

    @classmethod
    def html_plots(cls, reports: list[ValidationReport]) -> list[tuple[str, str]]:
        """(alt text, PNG data URI) of its plots in validation.html (quantkit.report.plots draws them)."""
        return []

    @classmethod
    def results(cls, report: ValidationReport) -> list[tuple[EvaluatedTarget, CheckResult]]:
        """Each target of `report` with this check's result."""
        return [(t, r) for t in report.targets if (r := t.result(cls.name)) is not None]
