"""Perplexity of the artifact and its base on held-out text, and the relative increase."""

from __future__ import annotations

from quantkit.checks.base import Check, CheckContext, CheckResult
from quantkit.gates import class_defaults
from quantkit.report.model import CardResult


class PerplexityCheck(Check):
    name = "perplexity"

    def run(self, ctx: CheckContext) -> CheckResult:
        scores = ctx.scores
        if not scores:
            return CheckResult(self.name, "skipped", reason=ctx.runtime_unavailable or "no evaluation text")
        per = {s.domain: {"base_ppl": s.base_ppl, "ppl": s.ppl, "ppl_increase": s.ppl_increase} for s in scores}
        return CheckResult(
            self.name,
            "measured",
            metrics={"ppl_increase": max(s.ppl_increase for s in scores)},
            per_domain=per,
            sample={
                s.domain: {"tokens": s.n_tokens, "context": s.context, "stride": s.stride, "runtime": s.runtime} for s in scores
            },
        )

    def default_gates(self, target, result) -> dict[str, float]:
        return {"ppl_increase_max": class_defaults(target.bits)["ppl_increase_max"]}

    @classmethod
    def card_results(cls, target, result) -> list[CardResult]:
        return [CardResult.on_heldout(d, "perplexity", round(d.ppl, 4), "perplexity") for d in target.domains]
