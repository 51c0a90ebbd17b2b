"""Check registry: a new check is one module plus one line here."""

from quantkit.checks.base import Check, CheckContext, CheckResult
from quantkit.checks.kld import KLDivergenceCheck
from quantkit.checks.lm_eval_tasks import LMEvalCheck
from quantkit.checks.perplexity import PerplexityCheck
from quantkit.checks.serve import ServeCheck

CHECKS: dict[str, Check] = {
    "perplexity": PerplexityCheck(),
    "kld": KLDivergenceCheck(),
    "lm_eval": LMEvalCheck(),
    "serve": ServeCheck(),
}

__all__ = ["CHECKS", "Check", "CheckContext", "CheckResult"]
