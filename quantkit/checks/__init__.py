"""Check registry: a new check is one module plus one line here.

Checks are built per run by `build_checks(**options)`: each check class receives the options its
constructor names (e.g. `tasks=`, `serve=`); an option no check takes is an error. Modules are
imported when a run builds its checks, so the registry line is all a new check needs.
"""

from __future__ import annotations

import inspect
from importlib import import_module

from quantkit.checks.base import Check, CheckContext, CheckResult

# name -> "module:class", in the order checks run and are reported
CHECKS: dict[str, str] = {
    "perplexity": "quantkit.checks.perplexity:PerplexityCheck",
    "kld": "quantkit.checks.kld:KLDivergenceCheck",
    "lm_eval": "quantkit.checks.lm_eval_tasks:LMEvalCheck",
    "serve": "quantkit.checks.serve:ServeCheck",
}


def check_class(name: str) -> type[Check]:
    module, _, cls = CHECKS[name].partition(":")
    return getattr(import_module(module), cls)


def check_classes() -> list[type[Check]]:
    """Every registered check class, in registry order (the reports ask each for its rows and sections)."""
    return [check_class(name) for name in CHECKS]


def build_checks(**options) -> list[Check]:
    """One instance of every registered check, each given the options its constructor accepts (None: its default)."""
    checks, used = [], set()
    for name in CHECKS:
        cls = check_class(name)
        accepted = inspect.signature(cls).parameters
        kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
        used |= {k for k in options if k in accepted}
        checks.append(cls(**kwargs))
    unknown = sorted(set(options) - used)
    if unknown:
        raise TypeError(f"no check takes the option(s) {', '.join(unknown)}; checks: {', '.join(CHECKS)}")
    return checks


__all__ = ["CHECKS", "Check", "CheckContext", "CheckResult", "build_checks", "check_class", "check_classes"]
