"""The Evaluation part of a pushed model card, from the pushed validation.json: the per-domain table, the
gates, then each check's own table; and the figures of the card's model-index. quantkit.publish.card places
them in the card."""

from __future__ import annotations

from quantkit.report.model import CardResult, ValidationReport, fixed
from quantkit.report.sections import card_results, card_sections, markdown_table


def evaluation_section(report: ValidationReport | None) -> list[str]:
    if report is None:
        return ["## Evaluation", "", "Not validated: no `validation.json` was pushed.", ""]
    s = report.settings
    out = ["## Evaluation", "",
           f"Measured by `quantkit validate` against the unquantized base on held-out text never used for calibration "
           f"(windows of {s.context} tokens every {s.stride}, up to {s.max_tokens} scored tokens per domain; "
           f"{s.device}, {s.dtype}). Verdict: **{'PASS' if report.passed else 'FAIL'}**.", "",
           "| target | domain | tokens | base ppl | ppl | Δppl | mean KLD | p99 KLD | top-1 agreement |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in report.targets:
        if t.runtime_unavailable:
            out.append(f"| {t.target} | — | 0 | — | — | — | — | — | — |")
        for d in t.domains:
            out.append(f"| {t.target} | {d.domain} | {d.n_tokens} | {fixed(d.base_ppl)} | {fixed(d.ppl)} | "
                       f"{fixed(d.ppl_increase * 100, 2)}% | {fixed(d.kld_mean, 5)} | {fixed(d.kld_p99, 5)} | "
                       f"{fixed(d.top1_agreement)} |")
    out += ["", "### Gates", "", "| target | gate | value | threshold | verdict |", "|---|---|---:|---:|---|"]
    for t in report.targets:
        for g in t.gates:
            out.append(f"| {t.target} | `{g.gate}` | {fixed(g.value, 5)} | {g.threshold} | {'pass' if g.passed else 'FAIL'} |")
    for section in card_sections(report):
        out += ["", f"### {section.title}", "", *([f"{section.note}.", ""] if section.note else []), *markdown_table(section)]
    return out + [""]


def eval_results(report: ValidationReport | None, scheme_in_names: bool = False) -> list:
    """huggingface_hub EvalResults for the card's model-index; `scheme_in_names`: one artifact, several
    targets (GGUF types), so each metric's name says its target's scheme."""
    from huggingface_hub import EvalResult

    if report is None:
        return []

    def hub(target, r: CardResult) -> EvalResult:
        suffix = f" ({target.scheme})" if scheme_in_names else ""
        return EvalResult(task_type="text-generation", dataset_type=r.dataset_type, dataset_name=r.dataset_name,
                          metric_type=r.metric_type, metric_value=r.metric_value, metric_name=f"{r.metric_name}{suffix}",
                          verified=False)

    return [hub(t, r) for t, r in card_results(report)]
