"""validation.md: the table of every target and domain with its verdict, then each check's own table."""

from __future__ import annotations

from quantkit.report.model import ValidationReport
from quantkit.report.sections import markdown_table, run_sections


def validation_markdown(report: ValidationReport) -> str:
    s = report.settings
    lines = [
        f"Validation of `{report.path.name}` against its unquantized base "
        f"(context {s.context}, stride {s.stride}, up to {s.max_tokens} tokens per domain).",
        *(["", f"Base: `{report.base.path}`, fingerprint {report.base.fingerprint[:12]}, which differs from the "
           f"{report.base.recorded_fingerprint[:12]} this artifact was made from (--allow-base-mismatch)."]
          if report.base is not None and not report.base.matches else []),
        "",
        "| target | domain | tokens | base ppl | ppl | Δppl | mean KLD | p99 KLD | top-1 agree | gates |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in report.targets:
        verdict = "pass" if t.passed else "FAIL: " + ", ".join(
            f"{g.gate} {g.value if g.value is None else round(g.value, 4)} vs {g.threshold}" for g in t.gates if not g.passed
        )
        if t.runtime_unavailable:
            lines.append(f"| {t.target} | — | 0 | — | — | — | — | — | — | SKIPPED ({t.runtime_unavailable}); {verdict} |")
        for d in t.domains:
            lines.append(
                f"| {t.target} | {d.domain} | {d.n_tokens} | {d.base_ppl:.3f} | {d.ppl:.3f} | {d.ppl_increase:+.1%} | "
                f"{d.kld_mean:.4f} | {d.kld_p99:.4f} | {d.top1_agreement:.1%} | {verdict} |"
            )
    for section in run_sections([report]):
        # "Speed workload: ..." reads as "(speed workload: ...)" after the title
        note = f" ({section.note[:1].lower()}{section.note[1:]})" if section.note else ""
        lines += ["", f"{section.title}{note}.", "", *markdown_table(section)]
    return "\n".join(lines) + "\n"
