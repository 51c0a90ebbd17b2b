"""vLLM's Prometheus /metrics: speculative-decoding counters, and latency percentiles."""

from __future__ import annotations

import math
import re

SPEC_COUNTERS = {
    "drafts": "vllm:spec_decode_num_drafts_total",
    "draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
    "accepted_tokens": "vllm:spec_decode_num_accepted_tokens_total",
}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_counters(text: str) -> dict[str, float]:
    """Sum of every sample of each metric name over its label sets (one engine or several)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


def spec_decode_stats(before: dict[str, float], after: dict[str, float]) -> dict:
    """Acceptance over a workload from two /metrics snapshots.

    acceptance_rate = accepted / proposed draft tokens; mean_acceptance_length = 1 + accepted / drafts
    (tokens emitted per target-model forward pass, as vLLM's own spec-decode logger defines it).
    """
    d = {k: after.get(name, 0.0) - before.get(name, 0.0) for k, name in SPEC_COUNTERS.items()}
    if not any(name in after for name in SPEC_COUNTERS.values()):
        return {"available": False, **{k: None for k in SPEC_COUNTERS}, "acceptance_rate": None, "mean_acceptance_length": None}
    return {
        "available": True, **{k: int(v) for k, v in d.items()},
        "acceptance_rate": d["accepted_tokens"] / d["draft_tokens"] if d["draft_tokens"] else None,
        "mean_acceptance_length": 1 + d["accepted_tokens"] / d["drafts"] if d["drafts"] else None,
    }


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    vals = sorted(v for v in values if v is not None and not math.isnan(v))
    if not vals:
        return None
    pos = (len(vals) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)
