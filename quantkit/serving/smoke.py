"""`serve_test`: the artifact behind vLLM's OpenAI-compatible server, checked and timed.

1. Start the server (plain), wait for /health; time to ready.
2. Read /v1/models and the quantization method vLLM reports in its engine config log line;
   compare it with the artifact's format; keep the kernel lines (a silent fallback shows there).
3. Smoke requests (chat and completion, all at once): each must succeed with non-empty text.
4. Greedy agreement: token ids of a known prompt against the transformers runtime's greedy
   ids for the same checkpoint (number of leading tokens that agree, of N).
5. The copy/edit/quote workload at each concurrency (TTFT/TPOT p50/p95, output tokens/s).
6. Restart with a speculative config (n-gram, or a draft model); the same workload; speedup,
   acceptance from /metrics counters, and greedy outputs compared with the plain run.
The servers are always stopped (also on errors and Ctrl-C); their log tails go into the result.

--serve-prompts and --serve-max-tokens bound every phase (smoke and greedy included); a scheme this
machine serves very slowly (FP8 on CPU, quantkit.serving.support) gets a short workload. A budget
(ServeOptions.timeout, --serve-timeout) bounds the whole stage: on expiry the server is stopped and
the phases left are "not measured: serve timeout of N s reached". Requests run in daemon threads that
the main thread only waits for, so SIGTERM/Ctrl-C stops the server within seconds (ABORT_GRACE_S).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from quantkit.errors import QuantkitError
from quantkit.progress import NullReporter, Reporter
from quantkit.serving.budget import Budget, ServeTimeout, within
from quantkit.serving.client import Request, complete_token_ids, get_text, run_workload
from quantkit.serving.metrics import parse_counters, spec_decode_stats
from quantkit.serving.server import (
    ABORT_GRACE_S,
    ServerError,
    ServerProcess,
    cpu_env,
    failure_reason,
    vllm_server_command,
)
from quantkit.serving.workload import GREEDY_PROMPT, smoke_requests, spec_requests
from quantkit.toolchains.vllm import VllmEnv

SERVED_NAME = "quantkit-smoke"
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


_QUANT = re.compile(r"Initializing a V1 LLM engine .*?quantization=([\w-]+)")
_KERNEL = re.compile(r"(Using \S*[Kk]ernel.*|.*Kernel\w* for .*)$")


def reported_quantization(log: str) -> str | None:
    m = _QUANT.search(log)
    if not m:
        return None
    return None if m.group(1) == "None" else m.group(1)


def kernel_lines(log: str) -> list[str]:
    seen: list[str] = []
    for line in log.splitlines():
        m = _KERNEL.search(line)
        if m:
            text = re.sub(r"^\(\w+ pid=\d+\)\s+\w+\s+[\d-]+ [\d:]+ \[[^\]]+\]\s*", "", line).strip()
            if text not in seen:
                seen.append(text)
    return seen[:20]


def transformers_greedy_ids(model_path: Path, prompt: str, n: int, device: str = "cpu", dtype: str = "float32") -> list[int]:
    """Greedy continuation with the transformers runtime: the reference for vLLM. validate passes its
    --device and --dtype (a 70B model is not run in float32 on the CPU); serve-test uses the CPU."""
    import torch

    from quantkit.runtimes.transformers import TransformersModel

    rt = TransformersModel(model_path, dtype, device)
    ids = rt.tokenize(prompt)
    try:
        with torch.inference_mode():
            out = rt.model.generate(torch.tensor([ids], device=rt.device), max_new_tokens=n, do_sample=False,
                                    num_beams=1, pad_token_id=rt.tokenizer.eos_token_id)
        return out[0, len(ids) :].tolist()
    finally:
        rt.close()


def greedy_reference(model_path: Path, expected_quantization: str | None, n: int, device: str = "cpu",
                     dtype: str = "float32") -> list[int] | None:
    """The transformers runtime's greedy ids for GREEDY_PROMPT; None for GGUF (transformers would
    dequantize it, which is not what llama.cpp or vLLM run)."""
    if expected_quantization == "gguf":
        return None
    return transformers_greedy_ids(model_path, GREEDY_PROMPT, n, device, dtype)


def _is_quantized(model: Path | None) -> bool:
    """A model folder whose config declares a quantization (a draft model, for the dtype choice)."""
    if model is None or not (Path(model) / "config.json").is_file():
        return False
    return bool(json.loads((Path(model) / "config.json").read_text()).get("quantization_config"))


def _request_failure(error: Exception, server: ServerProcess) -> str:
    """A request the server answered badly: the error, and the reason its log gives."""
    first_line = (str(error).splitlines() or [""])[0]
    return f"request failed ({type(error).__name__}: {first_line}); vLLM: {failure_reason(server.log_text())}"


def _divergence(plain: str, speculative: str) -> dict:
    """Where two outputs part, with 40 characters either side."""
    at = next((i for i, (x, y) in enumerate(zip(plain, speculative)) if x != y), min(len(plain), len(speculative)))
    return {
        "first_difference_at_char": at,
        "plain": plain[max(0, at - 40) : at + 40],
        "speculative": speculative[max(0, at - 40) : at + 40],
    }


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def unsupported_result(
    model_path: str | Path, env: VllmEnv, *, expected_quantization: str | None, options: ServeOptions | None = None
) -> ServeResult | None:
    """A result saying why `env` cannot serve this model on this machine, decided without starting a
    server (its CPU kernel library lacks the op the scheme needs); None when it can, or cannot be told."""
    from quantkit.serving.support import check_serving_support

    kind, reason, probe = check_serving_support(env, Path(model_path))
    if reason is None:
        return None
    options = options or ServeOptions()
    return ServeResult(
        "unsupported",
        str(model_path),
        expected_quantization,
        reason=reason,
        vllm=dict(env.info),
        options=options.to_dict(),
        serving_class=kind,
        kernel_probe=probe,
    )


@dataclass
class WorkloadPlan:
    """The requests of every phase: --serve-prompts and --serve-max-tokens bound them all (smoke and
    greedy included), and a scheme this machine serves very slowly gets quantkit.serving.support's
    short workload, the dropped concurrencies recorded as "not measured here"."""

    smoke: list[Request]
    greedy_tokens: int
    workload: list[Request]
    concurrency: tuple[int, ...]
    short_because: str | None = None  # why the workload is shorter than asked
    not_measured_here: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"smoke_requests": len(self.smoke), "smoke_max_tokens": self.smoke[0].max_tokens if self.smoke else None,
                "greedy_tokens": self.greedy_tokens, "workload_requests": len(self.workload),
                "max_tokens": self.workload[0].max_tokens if self.workload else None,
                "concurrency": list(self.concurrency), "short_because": self.short_because}


def plan_workload(options: ServeOptions, kind: str | None, device: str) -> WorkloadPlan:
    from quantkit.serving.support import SLOW_CPU_WORKLOAD, slow_reason

    prompts, max_tokens, concurrency = options.prompts, options.max_tokens, tuple(options.concurrency)
    slow = slow_reason(kind, device)
    dropped: dict[str, str] = {}
    if slow:
        prompts = min(prompts or SLOW_CPU_WORKLOAD.prompts, SLOW_CPU_WORKLOAD.prompts)
        max_tokens = min(max_tokens, SLOW_CPU_WORKLOAD.max_tokens)
        concurrency = (min(concurrency),)
        # the reason in full is short_because; this names it
        dropped = {f"concurrency {c}": f"not measured here: {kind} on CPU, short workload"
                   for c in options.concurrency if c not in concurrency}
    return WorkloadPlan(
        smoke=smoke_requests(min(options.smoke_max_tokens, max_tokens), prompts),
        greedy_tokens=min(options.greedy_tokens, max_tokens),
        workload=spec_requests(max_tokens, prompts),
        concurrency=concurrency,
        short_because=slow,
        not_measured_here=dropped,
    )


def _record_timeout(result: ServeResult, budget: Budget, plan: WorkloadPlan, speculative: bool) -> None:
    """Every phase without figures is "not measured: serve timeout of N s reached"."""
    result.timed_out = True
    result.reason = f"serve timeout of {budget.seconds:g} s reached"
    phases = {"server start": result.ready_s is not None, "smoke": bool(result.smoke), "greedy": bool(result.greedy),
              **{f"concurrency {c}": str(c) in result.performance for c in plan.concurrency}}
    if speculative:
        phases["speculative"] = result.speculative.get("mismatches") is not None
    for phase, done in phases.items():
        if not done:
            result.not_measured.setdefault(phase, budget.reason)
    if speculative and result.speculative.get("mismatches") is None:
        result.speculative.update(status="not measured", reason=budget.reason)


def serve_test(
    model_path: str | Path,
    env: VllmEnv,
    *,
    expected_quantization: str | None,
    options: ServeOptions | None = None,
    log_dir: str | Path,
    greedy_reference: list[int] | None = None,
    reporter: Reporter | None = None,
) -> ServeResult:
    """Serve, check and time the model (the module's docstring). Ctrl-C or SIGTERM stops the server at once
    and propagates; an expired `options.timeout` stops it too and returns what was measured."""
    options = options or ServeOptions()
    reporter = reporter or NullReporter()
    model_path, log_dir = Path(model_path), Path(log_dir)
    spec_config = options.speculative_config()  # bad options fail before any server starts
    cpu = env.info.get("device", "cpu") == "cpu"
    budget = Budget(options.timeout)
    result = ServeResult("measured", str(model_path), expected_quantization, vllm=dict(env.info), options=options.to_dict())
    from quantkit.serving.support import serving_class

    result.serving_class = serving_class(model_path)
    plan = plan_workload(options, result.serving_class, "cpu" if cpu else "gpu")
    result.plan, result.not_measured = plan.to_dict(), dict(plan.not_measured_here)
    if plan.short_because:
        reporter.log(f"short serving workload ({len(plan.workload)} prompt(s) x {plan.workload[0].max_tokens} tokens, "
                     f"concurrency {plan.concurrency[0]}): {plan.short_because}")
    workload = plan.workload
    quantized = expected_quantization is not None or _is_quantized(
        options.draft_model if options.speculative == "draft_model" else None
    )
    result.dtype = options.dtype or (("bfloat16" if quantized else "float32") if cpu else None)
    deadline = budget.deadline

    def command(spec: dict | None) -> list[str]:
        return vllm_server_command(
            env.python,
            model_path,
            served_name=SERVED_NAME,
            max_model_len=options.max_model_len,
            cpu=cpu,
            speculative_config=spec,
            dtype=result.dtype,
        )

    plain = ServerProcess(command(None), log_dir / "serve-vllm.log", env=cpu_env() if cpu else None)
    try:
        with reporter.task(f"vLLM: starting the server for {model_path.name}"):
            plain.start()
            result.ready_s = plain.wait_ready(options.ready_timeout, deadline=deadline)
        log = plain.log_text()
        result.quantization, result.kernels = reported_quantization(log), kernel_lines(log)
        served = json.loads(within(deadline, lambda: get_text(plain.base_url, "/v1/models")))["data"]
        smoke = plan.smoke
        with reporter.task(f"vLLM: {len(smoke)} smoke requests (chat + completion, concurrent)"):
            run = run_workload(plain.base_url, SERVED_NAME, smoke, concurrency=len(smoke), deadline=deadline)
        result.smoke = {
            "requests": len(run.results),
            "failed": run.failed,
            "max_tokens": smoke[0].max_tokens,
            "served_models": [m["id"] for m in served],
            "max_model_len": served[0].get("max_model_len") if served else None,
            "errors": [f"{r.id}: {r.error}" for r in run.results if not r.ok],
            "samples": {r.id: r.text[:200] for r in run.results[:2]},
        }
        with reporter.task(f"vLLM: greedy agreement on {GREEDY_PROMPT!r} ({plan.greedy_tokens} tokens)"):
            ids = within(deadline, lambda: complete_token_ids(plain.base_url, SERVED_NAME, GREEDY_PROMPT, plan.greedy_tokens))
        result.greedy = {
            "prompt": GREEDY_PROMPT,
            "tokens": plan.greedy_tokens,
            "vllm_ids": ids,
            "reference": "transformers" if greedy_reference is not None else None,
            "agreeing_tokens": (_common_prefix(ids, greedy_reference[:plan.greedy_tokens])
                                if greedy_reference is not None else None),
        }
        plain_texts = {}
        for c in plan.concurrency:
            with reporter.task(f"vLLM: copy/edit workload, {len(workload)} requests at concurrency {c}"):
                run = run_workload(plain.base_url, SERVED_NAME, workload, concurrency=c, deadline=deadline)
            result.performance[str(c)] = run.summary()
            plain_texts[c] = {r.id: r.text for r in run.results}
    except ServeTimeout:
        plain.stop(grace=ABORT_GRACE_S)
        _record_timeout(result, budget, plan, spec_config is not None)
        if result.ready_s is None:
            result.status = "failed"
        return result
    except ServerError as e:
        result.status, result.reason, result.log_tail = "failed", str(e), e.log_tail
        return result
    except (httpx.HTTPError, KeyError, ValueError) as e:  # the server answered badly: its log says why
        result.status, result.reason = "failed", _request_failure(e, plain)
        result.request_errors += 1
        return result
    except BaseException:  # Ctrl-C or SIGTERM: stop the server now, which ends the requests in flight
        plain.stop(grace=ABORT_GRACE_S)
        raise
    finally:
        plain.stop()
        result.log_tail = result.log_tail or plain.log_tail(80)

    if spec_config is None:
        return result
    sd: dict = {"method": spec_config["method"], "config": spec_config, "performance": {}, "speedup": {}, "acceptance": {}}
    result.speculative = sd
    if budget.expired():
        _record_timeout(result, budget, plan, True)
        return result
    spec = ServerProcess(command(spec_config), log_dir / "serve-vllm-spec.log", env=cpu_env() if cpu else None)
    try:
        with reporter.task(f"vLLM: starting the server with {spec_config['method']} speculation"):
            spec.start()
            sd["ready_s"] = spec.wait_ready(options.ready_timeout, deadline=deadline)
        mismatches, compared, diverged = 0, 0, []
        first = parse_counters(within(deadline, lambda: get_text(spec.base_url, "/metrics")))
        after = first
        for c in plan.concurrency:
            before = after
            with reporter.task(f"vLLM: same workload with speculation at concurrency {c}"):
                run = run_workload(spec.base_url, SERVED_NAME, workload, concurrency=c, deadline=deadline)
            after = parse_counters(within(deadline, lambda: get_text(spec.base_url, "/metrics")))
            sd["performance"][str(c)] = run.summary()
            sd["acceptance"][str(c)] = spec_decode_stats(before, after)
            base_tps = result.performance[str(c)]["output_tokens_per_s"]
            spec_tps = sd["performance"][str(c)]["output_tokens_per_s"]
            sd["speedup"][str(c)] = spec_tps / base_tps if base_tps and spec_tps else None
            for r in (r for r in run.results if r.ok and r.id in plain_texts[c]):
                compared += 1
                if r.text != plain_texts[c][r.id]:
                    mismatches += 1
                    diverged.append({"request": r.id, "concurrency": c, **_divergence(plain_texts[c][r.id], r.text)})
        sd["compared_outputs"], sd["mismatches"], sd["diverged"] = compared, mismatches, diverged
        overall = spec_decode_stats(first, after)  # over every concurrency
        if overall["available"]:
            sd["acceptance_rate"], sd["mean_acceptance_length"] = overall["acceptance_rate"], overall["mean_acceptance_length"]
    except ServeTimeout:
        spec.stop(grace=ABORT_GRACE_S)
        _record_timeout(result, budget, plan, True)
    except ServerError as e:
        # the plain results stand; the speculative gates fail as unmeasured
        sd["status"], sd["reason"], result.spec_log_tail = "failed", str(e), e.log_tail
    except (httpx.HTTPError, KeyError, ValueError) as e:
        sd["status"], sd["reason"] = "failed", _request_failure(e, spec)
    except BaseException:  # Ctrl-C or SIGTERM
        spec.stop(grace=ABORT_GRACE_S)
        raise
    finally:
        spec.stop()
        result.spec_log_tail = result.spec_log_tail or spec.log_tail(40)
    return result


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
