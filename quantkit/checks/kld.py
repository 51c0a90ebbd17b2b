"""KL divergence of the artifact's next-token distribution from the base's, over the full vocabulary."""

from __future__ import annotations

from quantkit.checks.base import Check, CheckContext, CheckResult
from quantkit.gates import class_defaults
from quantkit.report.model import CardResult


class KLDivergenceCheck(Check):
    name = "kld"

    def run(self, ctx: CheckContext) -> CheckResult:
        scores = ctx.scores
        if not scores:
            return CheckResult(self.name, "skipped", reason=ctx.runtime_unavailable or "no evaluation text")
        per = {
            s.domain: {
                "kld_mean": s.kld_mean,
                "kld_median": s.kld_median,
                "kld_p99": s.kld_p99,
                "top1_agreement": s.top1_agreement,
            }
            for s in scores
        }
        return CheckResult(
            self.name,
            "measured",
            metrics={"kld_mean": max(s.kld_mean for s in scores), "top1_agreement": min(s.top1_agreement for s in scores)},
            per_domain=per,
            sample={s.domain: {"tokens": s.n_tokens, "runtime": s.runtime} for s in scores},
        )

    def default_gates(self, target, result) -> dict[str, float]:
        return {"kld_mean_max": class_defaults(target.bits)["kld_mean_max"]}

    @classmethod
    def card_results(cls, target, result) -> list[CardResult]:
        return [CardResult.on_heldout(d, "kl_divergence", round(d.kld_mean, 5), "mean KL divergence to the base")
                for d in target.domains]
