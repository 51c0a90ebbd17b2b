"""Pass/fail gates on validation metrics, with defaults by precision class.

Defaults follow what the field publishes: llama.cpp's KL-divergence tables put Q8_0 at a mean
KLD of about 0.001-0.005 and Q4_K_M at about 0.03 on 8B models; quantkit allows roughly twice
that per precision class. Small models lose more (the embedded SmolLM2-135M fails several of
these): that is a true result, so the defaults are not loosened for it. Override per run with
`--gate KEY=VALUE`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from quantkit.errors import QuantkitError

# metric name -> (gate key, comparison): "max" gates fail above the threshold, "min" below it
GATE_KEYS = {
    "kld_mean_max": ("kld_mean", "max"),
    "ppl_increase_max": ("ppl_increase", "max"),
    "top1_agreement_min": ("top1_agreement", "min"),
    "recovery_min": ("recovery", "min"),  # lm-eval accuracy artifact / base
    # vLLM serving smoke test (applied when it runs)
    "serve_loaded_min": ("serve_loaded", "min"),  # 1: the server started with the artifact
    "serve_ready_s_max": ("serve_ready_s", "max"),
    "serve_failed_requests_max": ("serve_failed_requests", "max"),
    "serve_quantization_match_min": ("serve_quantization_match", "min"),  # 1: vLLM used the artifact's method
    "spec_mismatches_max": ("spec_mismatches", "max"),  # greedy outputs that differ with speculation
}
CLASS_DEFAULTS = {  # bits -> default thresholds
    16: {"kld_mean_max": 0.002, "ppl_increase_max": 0.01},
    8: {"kld_mean_max": 0.01, "ppl_increase_max": 0.02},
    6: {"kld_mean_max": 0.02, "ppl_increase_max": 0.03},
    5: {"kld_mean_max": 0.04, "ppl_increase_max": 0.05},
    4: {"kld_mean_max": 0.06, "ppl_increase_max": 0.08},
    3: {"kld_mean_max": 0.15, "ppl_increase_max": 0.15},
    2: {"kld_mean_max": 0.4, "ppl_increase_max": 0.4},
}


def class_defaults(bits: int) -> dict[str, float]:
    """KLD and perplexity thresholds of a precision class (the nearest class defined) given the
    target's nominal bits, which its format answers (quantkit.formats)."""
    b = bits
    return dict(CLASS_DEFAULTS[min(CLASS_DEFAULTS, key=lambda k: (abs(k - b), -k))])



RATIO_GATES = ("top1_agreement_min", "serve_loaded_min", "serve_quantization_match_min")  # fractions in [0, 1]


def threshold_problem(key: str, value: float) -> str | None:
    """Why `value` cannot be the threshold of gate `key` (None when it can): thresholds are finite,
    not negative, and fractions stay within [0, 1]."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key} = {value!r}: expected a number"
    if not math.isfinite(value):
        return f"{key} = {value}: expected a finite number"
    if value < 0:
        return f"{key} = {value}: thresholds are not negative"
    if key in RATIO_GATES and value > 1:
        return f"{key} = {value}: a fraction between 0 and 1"
    return None


def check_thresholds(gates: dict[str, float], where: str = "--gate") -> None:
    problems = [p for k, v in gates.items() if (p := threshold_problem(k, v))]
    if problems:
        raise QuantkitError(f"{where} " + "; ".join(problems))


def parse_gate_overrides(items: list[str] | None) -> dict[str, float]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key not in GATE_KEYS:
            raise QuantkitError(f"--gate {item!r}: expected KEY=VALUE with KEY one of {', '.join(GATE_KEYS)}")
        try:
            out[key] = float(value)
        except ValueError:
            raise QuantkitError(f"--gate {item!r}: {value!r} is not a number") from None
        problem = threshold_problem(key, out[key])
        if problem:
            raise QuantkitError(f"--gate {item!r}: {problem.split(': ', 1)[1]}")
    return out


@dataclass
class GateResult:
    gate: str
    metric: str
    value: float | None
    threshold: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_gates(gates: dict[str, float], metrics: dict[str, float]) -> list[GateResult]:
    """Each gate against its metric, in GATE_KEYS order (whoever set it)."""
    results = []
    for key, threshold in sorted(gates.items(), key=lambda kv: list(GATE_KEYS).index(kv[0])):
        metric, kind = GATE_KEYS[key]
        value = metrics.get(metric)
        # a metric that was not measured fails its gate: a skipped check never passes
        passed = value is not None and (value <= threshold if kind == "max" else value >= threshold)
        results.append(GateResult(key, metric, value, threshold, passed))
    return results
