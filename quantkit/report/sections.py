"""Each registered check's part of the reports, asked of the check (quantkit.checks.base.Check): the renderers
loop over these and never name a check, so a new check's table reaches validation.md, validation.html, the
terminal and the model card through its own module and its registry line."""

from __future__ import annotations

from quantkit.checks import check_classes
from quantkit.report.model import CardResult, EvaluatedTarget, Section, ValidationReport


def run_sections(reports: list[ValidationReport]) -> list[Section]:
    """Every check's table over `reports` (one table per check, its rows from every report), in registry order."""
    out = []
    for cls in check_classes():
        parts = [s for s in (cls.run_section(r) for r in reports) if s is not None and s.rows]
        if parts:
            first = parts[0]
            out.append(Section(first.title, first.columns, tuple(row for s in parts for row in s.rows), first.note))
    return out


def card_sections(report: ValidationReport) -> list[Section]:
    return [s for s in (cls.card_section(report) for cls in check_classes()) if s is not None and s.rows]


def card_results(report: ValidationReport) -> list[tuple[EvaluatedTarget, CardResult]]:
    """Every check's model-index figures, target by target."""
    return [(t, figure) for t in report.targets for cls in check_classes()
            if (result := t.result(cls.name)) is not None for figure in cls.card_results(t, result)]


def check_plots(reports: list[ValidationReport]) -> list[tuple[str, str]]:
    return [plot for cls in check_classes() for plot in cls.html_plots(reports)]


def markdown_table(section: Section) -> list[str]:
    """A section's table in Markdown: the target column, then the check's own."""
    columns = ["target", *(c.header for c in section.columns)]
    align = ["---", *("---:" if c.numeric else "---" for c in section.columns)]
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(row) + " |" for row in section.rows)]
