"""Check registry: a new check is one module plus one line here."""

from quantkit.checks.base import Check, CheckResult
from quantkit.checks.kld import KLDivergenceCheck
from quantkit.checks.perplexity import PerplexityCheck

CHECKS: dict[str, Check] = {
    "perplexity": PerplexityCheck(),
    "kld": KLDivergenceCheck(),
}

__all__ = ["CHECKS", "Check", "CheckResult"]
