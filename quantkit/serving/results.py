"""What the serving check is asked and what it found: `ServeOptions` (the workload, speculation, the budget),
`ServeResult` (every phase's figures, the gate metrics it yields) and the one line a table shows for it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from quantkit.errors import QuantkitError

SPEC_METHODS = ("ngram", "draft_model")
WORKLOAD_NOTE = ("copy/edit/quote prompts (the text to reproduce is in the prompt), where n-gram speculation can help; "
                 "speedups on free-form text are lower")


@dataclass
class ServeOptions:
    speculative: str | None = "ngram"  # "ngram" | "draft_model" | None
    draft_model: Path | None = None  # for draft_model: e.g. the quantized artifact drafting for its float base
    num_speculative_tokens: int = 4
    concurrency: tuple[int, ...] = (1, 8)
    max_tokens: int = 96  # per request of the speed workload
    prompts: int | None = None  # first N prompts of the speed workload (default: all 8)
    smoke_max_tokens: int = 32
    greedy_tokens: int = 16
    ready_timeout: float = 600.0
    max_model_len: int = 2048
    # vLLM --dtype. Default on CPU: float32 for unquantized models (the transformers reference is fp32,
    # and bf16 numerics change greedy outputs under speculation), bfloat16 for quantized ones (vLLM's
    # CPU kernels for them are bf16: cpu_gemm_wna16 is "not implemented for 'Float'"); on GPU the model's.
    dtype: str | None = None
    # total seconds of the serving stage (both servers' starts, every request; not the transformers
    # reference before it); on expiry the server is stopped and the rest is "not measured"
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout)
                                             and self.timeout > 0):
            raise QuantkitError(f"--serve-timeout {self.timeout!r}: expected a positive, finite number of seconds")

    def speculative_config(self) -> dict | None:
        if self.speculative is None:
            return None
        if self.speculative == "ngram":
            return {"method": "ngram", "num_speculative_tokens": self.num_speculative_tokens,
                    "prompt_lookup_max": 4, "prompt_lookup_min": 2}
        if self.speculative == "draft_model":
            if self.draft_model is None:
                raise ValueError("speculative method draft_model needs a draft model path")
            return {
                "method": "draft_model",
                "model": str(self.draft_model),
                "num_speculative_tokens": self.num_speculative_tokens,
            }
        raise ValueError(f"unknown speculative method {self.speculative!r}; expected one of {', '.join(SPEC_METHODS)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["draft_model"] = str(self.draft_model) if self.draft_model else None
        d["concurrency"] = list(self.concurrency)
        return d


@dataclass
class ServeResult:
    status: str  # "measured" | "failed" (did not load, or crashed while serving) | "unsupported" (no kernel here; not started)
    model: str
    expected_quantization: str | None
    reason: str | None = None
    vllm: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    ready_s: float | None = None
    dtype: str | None = None
    quantization: str | None = None  # as vLLM reports it
    kernels: list[str] = field(default_factory=list)
    smoke: dict = field(default_factory=dict)
    greedy: dict = field(default_factory=dict)
    performance: dict = field(default_factory=dict)  # concurrency -> summary
    speculative: dict = field(default_factory=dict)
    workload: str = WORKLOAD_NOTE
    log_tail: str = ""
    spec_log_tail: str = ""
    serving_class: str | None = None  # W4A16, W8A8, FP8, float, ... (quantkit.serving.support)
    kernel_probe: dict | None = None  # which kernel library and ops vLLM has on this CPU
    plan: dict = field(default_factory=dict)  # the requests every phase sent (WorkloadPlan.to_dict)
    # phase ("server start", "smoke", "greedy", "concurrency 8", "speculative") -> why it has no figures:
    # "not measured: serve timeout of N s reached", or "not measured here: <reason>" (a slow scheme's short workload)
    not_measured: dict = field(default_factory=dict)
    timed_out: bool = False  # the --serve-timeout budget ran out
    request_errors: int = 0  # requests that raised (greedy, /v1/models) instead of returning a failed result

    @property
    def quantization_matches(self) -> bool | None:
        if self.ready_s is None:  # the method is read from the log of a server that got ready
            return None
        return (self.quantization or None) == (self.expected_quantization or None)

    def metrics(self) -> dict[str, float]:
        """Gate metrics: everything that was measured, also when a later phase failed or the budget ran out.

        serve_loaded is 1 once the server got ready (a request failing afterwards fails
        serve_failed_requests, not this), 0 when it did not start, absent when the budget ran out first.
        serve_failed_requests counts every request that failed; after a timeout it is absent unless one
        did fail (requests never sent cannot be said to succeed). spec_mismatches needs the whole
        speculative phase."""
        if self.ready_s is None:
            return {} if "server start" in self.not_measured else {"serve_loaded": 0.0}
        out: dict[str, float] = {"serve_loaded": 1.0, "serve_ready_s": self.ready_s,
                                 "serve_quantization_match": 1.0 if self.quantization_matches else 0.0}
        failed = self.request_errors + self.smoke.get("failed", 0) + sum(p["failed"] for p in self.performance.values())
        failed += sum(p["failed"] for p in self.speculative.get("performance", {}).values())
        if failed or not self.timed_out:
            out["serve_failed_requests"] = float(failed)
        if self.speculative.get("mismatches") is not None:
            out["spec_mismatches"] = float(self.speculative["mismatches"])
        return out

    def unmeasured_metrics(self) -> dict[str, str]:
        """Gate metric -> why it has no value (for reports beside a failing gate)."""
        why = next((r for r in self.not_measured.values() if r.startswith("not measured: serve timeout")), None)
        out = {}
        if why and "server start" in self.not_measured:
            out["serve_loaded"] = out["serve_ready_s"] = out["serve_quantization_match"] = why
        if why:
            out["serve_failed_requests"] = why
        if self.speculative.get("mismatches") is None and self.speculative.get("reason"):
            out["spec_mismatches"] = self.speculative["reason"]
        m = self.metrics()
        return {k: v for k, v in out.items() if k not in m}

    def to_dict(self) -> dict:
        return {**asdict(self), "quantization_matches": self.quantization_matches, "metrics": self.metrics(),
                "unmeasured_metrics": self.unmeasured_metrics()}



def summary_line(check: dict) -> str:
    """One line for tables: the serving check's status and headline figures (from CheckResult.to_dict())."""
    if check["status"] == "skipped":
        return f"skipped: {check['reason']}"
    if check["status"] == "unsupported":
        return f"not servable here: {check['reason']}"
    d = check.get("details") or {}
    if d.get("ready_s") is None:
        return f"did not serve: {check['reason']}"
    parts = [f"ready {d['ready_s']:.0f} s", f"quantization {d['quantization'] or 'none'}"]
    smoke = d.get("smoke") or {}
    if smoke:
        parts.append(f"{smoke['requests'] - smoke['failed']}/{smoke['requests']} smoke ok")
    g = d.get("greedy") or {}
    if g.get("agreeing_tokens") is not None:
        parts.append(f"greedy {g['agreeing_tokens']}/{g['tokens']} tokens as transformers")
    for c, p in (d.get("performance") or {}).items():
        if p.get("output_tokens_per_s"):
            parts.append(f"c{c} {p['output_tokens_per_s']:.0f} tok/s")
    sd = d.get("speculative") or {}
    if sd.get("speedup"):
        ups = ", ".join(f"c{c} {v:.2f}x" for c, v in sd["speedup"].items() if v)
        rate = sd.get("acceptance_rate")
        parts.append(f"{sd['method']} speedup {ups}" + (f", {rate:.0%} accepted" if rate is not None else ""))
        parts.append(f"{sd['compared_outputs'] - sd['mismatches']}/{sd['compared_outputs']} outputs identical")
    elif sd.get("reason") and sd.get("status") != "not measured":
        parts.append(f"speculation failed: {sd['reason']}")
    if check["status"] == "failed":
        parts.append(f"failed: {check['reason']}")
    if (d.get("plan") or {}).get("short_because"):
        p = d["plan"]
        parts.append(f"short workload ({p['workload_requests']} x {p['max_tokens']} tokens): {p['short_because']}")
    parts += [f"{why} ({', '.join(phases)})" for why, phases in not_measured_by_reason(d.get("not_measured") or {}).items()]
    return "; ".join(parts)


def not_measured_by_reason(not_measured: dict[str, str]) -> dict[str, list[str]]:
    """"not measured: serve timeout of 60 s reached" -> the phases it left without figures."""
    out: dict[str, list[str]] = {}
    for phase, why in not_measured.items():
        out.setdefault(why, []).append(phase)
    return out
