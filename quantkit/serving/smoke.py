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
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from quantkit.progress import NullReporter, Reporter
from quantkit.serving.client import complete_token_ids, get_text, run_workload
from quantkit.serving.metrics import parse_counters, spec_decode_stats
from quantkit.serving.server import ServerError, ServerProcess, cpu_env, failure_reason, vllm_server_command
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

    @property
    def quantization_matches(self) -> bool | None:
        if self.status != "measured":
            return None
        return (self.quantization or None) == (self.expected_quantization or None)

    def metrics(self) -> dict[str, float]:
        """Gate metrics; only what was measured."""
        out: dict[str, float] = {"serve_loaded": 1.0 if self.status == "measured" else 0.0}
        if self.status != "measured":
            return out
        failed = self.smoke.get("failed", 0) + sum(p["failed"] for p in self.performance.values())
        failed += sum(p["failed"] for p in self.speculative.get("performance", {}).values())
        out["serve_failed_requests"] = float(failed)
        if self.ready_s is not None:
            out["serve_ready_s"] = self.ready_s
        out["serve_quantization_match"] = 1.0 if self.quantization_matches else 0.0
        if self.speculative.get("mismatches") is not None:
            out["spec_mismatches"] = float(self.speculative["mismatches"])
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "quantization_matches": self.quantization_matches, "metrics": self.metrics()}


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
    options = options or ServeOptions()
    reporter = reporter or NullReporter()
    model_path, log_dir = Path(model_path), Path(log_dir)
    spec_config = options.speculative_config()  # bad options fail before any server starts
    cpu = env.info.get("device", "cpu") == "cpu"
    result = ServeResult("measured", str(model_path), expected_quantization, vllm=dict(env.info), options=options.to_dict())
    from quantkit.serving.support import serving_class

    result.serving_class = serving_class(model_path)
    workload = spec_requests(options.max_tokens, options.prompts)
    quantized = expected_quantization is not None or _is_quantized(
        options.draft_model if options.speculative == "draft_model" else None
    )
    result.dtype = options.dtype or (("bfloat16" if quantized else "float32") if cpu else None)

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
            result.ready_s = plain.wait_ready(options.ready_timeout)
        log = plain.log_text()
        result.quantization, result.kernels = reported_quantization(log), kernel_lines(log)
        served = json.loads(get_text(plain.base_url, "/v1/models"))["data"]
        smoke = smoke_requests(options.smoke_max_tokens)
        with reporter.task(f"vLLM: {len(smoke)} smoke requests (chat + completion, concurrent)"):
            run = run_workload(plain.base_url, SERVED_NAME, smoke, concurrency=len(smoke))
        result.smoke = {
            "requests": len(run.results),
            "failed": run.failed,
            "served_models": [m["id"] for m in served],
            "max_model_len": served[0].get("max_model_len") if served else None,
            "errors": [f"{r.id}: {r.error}" for r in run.results if not r.ok],
            "samples": {r.id: r.text[:200] for r in run.results[:2]},
        }
        with reporter.task(f"vLLM: greedy agreement on {GREEDY_PROMPT!r} ({options.greedy_tokens} tokens)"):
            ids = complete_token_ids(plain.base_url, SERVED_NAME, GREEDY_PROMPT, options.greedy_tokens)
        result.greedy = {
            "prompt": GREEDY_PROMPT,
            "tokens": options.greedy_tokens,
            "vllm_ids": ids,
            "reference": "transformers" if greedy_reference is not None else None,
            "agreeing_tokens": _common_prefix(ids, greedy_reference) if greedy_reference is not None else None,
        }
        plain_texts = {}
        for c in options.concurrency:
            with reporter.task(f"vLLM: copy/edit workload, {len(workload)} requests at concurrency {c}"):
                run = run_workload(plain.base_url, SERVED_NAME, workload, concurrency=c)
            result.performance[str(c)] = run.summary()
            plain_texts[c] = {r.id: r.text for r in run.results}
    except ServerError as e:
        result.status, result.reason, result.log_tail = "failed", str(e), e.log_tail
        return result
    except (httpx.HTTPError, KeyError, ValueError) as e:  # the server answered badly: its log says why
        result.status, result.reason = "failed", _request_failure(e, plain)
        return result
    finally:
        plain.stop()
        result.log_tail = result.log_tail or plain.log_tail(80)

    if spec_config is None:
        return result
    spec = ServerProcess(command(spec_config), log_dir / "serve-vllm-spec.log", env=cpu_env() if cpu else None)
    sd: dict = {"method": spec_config["method"], "config": spec_config, "performance": {}, "speedup": {}, "acceptance": {}}
    result.speculative = sd
    try:
        with reporter.task(f"vLLM: starting the server with {spec_config['method']} speculation"):
            spec.start()
            sd["ready_s"] = spec.wait_ready(options.ready_timeout)
        mismatches, compared, diverged = 0, 0, []
        first = parse_counters(get_text(spec.base_url, "/metrics"))
        after = first
        for c in options.concurrency:
            before = after
            with reporter.task(f"vLLM: same workload with speculation at concurrency {c}"):
                run = run_workload(spec.base_url, SERVED_NAME, workload, concurrency=c)
            after = parse_counters(get_text(spec.base_url, "/metrics"))
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
    except ServerError as e:
        # the plain results stand; the speculative gates fail as unmeasured
        sd["status"], sd["reason"], result.spec_log_tail = "failed", str(e), e.log_tail
    except (httpx.HTTPError, KeyError, ValueError) as e:
        sd["status"], sd["reason"] = "failed", _request_failure(e, spec)
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
    if check["status"] == "failed" and not d.get("performance"):
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
    elif sd.get("reason"):
        parts.append(f"speculation failed: {sd['reason']}")
    return "; ".join(parts)
