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

Beside it: results (ServeOptions, ServeResult, the summary line), workload (the requests and their plan),
server (the process and what its log says), reference (the transformers greedy ids).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from quantkit.progress import NullReporter, Reporter
from quantkit.serving import reference
from quantkit.serving.budget import Budget, ServeTimeout, within
from quantkit.serving.client import complete_token_ids, get_text, run_workload
from quantkit.serving.metrics import parse_counters, spec_decode_stats
from quantkit.serving.results import (  # noqa: F401 - WORKLOAD_NOTE, summary_line re-exported: their old home
    WORKLOAD_NOTE,
    AcceptanceStats,
    Divergence,
    GreedyResult,
    PlannedWorkload,
    ServeOptions,
    ServeResult,
    SmokeResult,
    SpeculativeResult,
    WorkloadSummary,
    summary_line,
)
from quantkit.serving.server import (
    ABORT_GRACE_S,
    ServerError,
    ServerProcess,
    cpu_env,
    failure_reason,
    kernel_lines,
    reported_quantization,
    vllm_server_command,
)
from quantkit.serving.workload import GREEDY_PROMPT, WorkloadPlan, plan_workload
from quantkit.toolchains.vllm import VllmEnv

SERVED_NAME = "quantkit-smoke"
# re-exported from their old home (checks.serve, validate, the renderers import them from here); an alias, as
# serve_test's `greedy_reference` argument takes the function's name
greedy_reference, transformers_greedy_ids = reference.greedy_reference, reference.transformers_greedy_ids


def _is_quantized(model: Path | None) -> bool:
    """A model folder whose config declares a quantization (a draft model, for the dtype choice)."""
    if model is None or not (Path(model) / "config.json").is_file():
        return False
    return bool(json.loads((Path(model) / "config.json").read_text()).get("quantization_config"))


def _request_failure(error: Exception, server: ServerProcess) -> str:
    """A request the server answered badly: the error, and the reason its log gives."""
    first_line = (str(error).splitlines() or [""])[0]
    return f"request failed ({type(error).__name__}: {first_line}); vLLM: {failure_reason(server.log_text())}"


def _divergence(request: str, concurrency: int, plain: str, speculative: str) -> Divergence:
    """Where two outputs part, with 40 characters either side."""
    at = next((i for i, (x, y) in enumerate(zip(plain, speculative)) if x != y), min(len(plain), len(speculative)))
    return Divergence(request=request, concurrency=concurrency, first_difference_at_char=at,
                      plain=plain[max(0, at - 40) : at + 40], speculative=speculative[max(0, at - 40) : at + 40])


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
        status="unsupported",
        model=str(model_path),
        expected_quantization=expected_quantization,
        reason=reason,
        vllm=dict(env.info),
        options=options.to_dict(),
        serving_class=kind,
        kernel_probe=probe,
    )



def _record_timeout(result: ServeResult, budget: Budget, plan: WorkloadPlan, speculative: bool) -> None:
    """Every phase without figures is "not measured: serve timeout of N s reached"."""
    result.timed_out = True
    result.reason = f"serve timeout of {budget.seconds:g} s reached"
    compared = result.speculative is not None and result.speculative.mismatches is not None
    phases = {"server start": result.ready_s is not None, "smoke": result.smoke is not None,
              "greedy": result.greedy is not None, **{f"concurrency {c}": str(c) in result.performance for c in plan.concurrency}}
    if speculative:
        phases["speculative"] = compared
    for phase, done in phases.items():
        if not done:
            result.not_measured.setdefault(phase, budget.reason)
    if speculative and not compared:
        result.speculative = result.speculative or SpeculativeResult()
        result.speculative.status, result.speculative.reason = "not measured", budget.reason


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
    result = ServeResult(status="measured", model=str(model_path), expected_quantization=expected_quantization,
                         vllm=dict(env.info), options=options.to_dict())
    from quantkit.serving.support import serving_class

    result.serving_class = serving_class(model_path)
    plan = plan_workload(options, result.serving_class, "cpu" if cpu else "gpu")
    result.plan, result.not_measured = PlannedWorkload(**plan.to_dict()), dict(plan.not_measured_here)
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
        result.smoke = SmokeResult(
            requests=len(run.results),
            failed=run.failed,
            max_tokens=smoke[0].max_tokens,
            served_models=[m["id"] for m in served],
            max_model_len=served[0].get("max_model_len") if served else None,
            errors=[f"{r.id}: {r.error}" for r in run.results if not r.ok],
            samples={r.id: r.text[:200] for r in run.results[:2]},
        )
        with reporter.task(f"vLLM: greedy agreement on {GREEDY_PROMPT!r} ({plan.greedy_tokens} tokens)"):
            ids = within(deadline, lambda: complete_token_ids(plain.base_url, SERVED_NAME, GREEDY_PROMPT, plan.greedy_tokens))
        result.greedy = GreedyResult(
            prompt=GREEDY_PROMPT,
            tokens=plan.greedy_tokens,
            vllm_ids=ids,
            reference="transformers" if greedy_reference is not None else None,
            agreeing_tokens=(_common_prefix(ids, greedy_reference[:plan.greedy_tokens])
                             if greedy_reference is not None else None),
        )
        plain_texts = {}
        for c in plan.concurrency:
            with reporter.task(f"vLLM: copy/edit workload, {len(workload)} requests at concurrency {c}"):
                run = run_workload(plain.base_url, SERVED_NAME, workload, concurrency=c, deadline=deadline)
            result.performance[str(c)] = WorkloadSummary(**run.summary())
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
    sd = SpeculativeResult(method=spec_config["method"], config=spec_config, performance={}, speedup={}, acceptance={})
    result.speculative = sd
    if budget.expired():
        _record_timeout(result, budget, plan, True)
        return result
    spec = ServerProcess(command(spec_config), log_dir / "serve-vllm-spec.log", env=cpu_env() if cpu else None)
    try:
        with reporter.task(f"vLLM: starting the server with {spec_config['method']} speculation"):
            spec.start()
            sd.ready_s = spec.wait_ready(options.ready_timeout, deadline=deadline)
        mismatches, compared, diverged = 0, 0, []
        first = parse_counters(within(deadline, lambda: get_text(spec.base_url, "/metrics")))
        after = first
        for c in plan.concurrency:
            before = after
            with reporter.task(f"vLLM: same workload with speculation at concurrency {c}"):
                run = run_workload(spec.base_url, SERVED_NAME, workload, concurrency=c, deadline=deadline)
            after = parse_counters(within(deadline, lambda: get_text(spec.base_url, "/metrics")))
            sd.performance[str(c)] = WorkloadSummary(**run.summary())
            sd.acceptance[str(c)] = AcceptanceStats(**spec_decode_stats(before, after))
            base_tps = result.performance[str(c)].output_tokens_per_s
            spec_tps = sd.performance[str(c)].output_tokens_per_s
            sd.speedup[str(c)] = spec_tps / base_tps if base_tps and spec_tps else None
            for r in (r for r in run.results if r.ok and r.id in plain_texts[c]):
                compared += 1
                if r.text != plain_texts[c][r.id]:
                    mismatches += 1
                    diverged.append(_divergence(r.id, c, plain_texts[c][r.id], r.text))
        sd.compared_outputs, sd.mismatches, sd.diverged = compared, mismatches, diverged
        overall = AcceptanceStats(**spec_decode_stats(first, after))  # over every concurrency
        if overall.available:
            sd.acceptance_rate, sd.mean_acceptance_length = overall.acceptance_rate, overall.mean_acceptance_length
    except ServeTimeout:
        spec.stop(grace=ABORT_GRACE_S)
        _record_timeout(result, budget, plan, True)
    except ServerError as e:
        # the plain results stand; the speculative gates fail as unmeasured
        sd.status, sd.reason, result.spec_log_tail = "failed", str(e), e.log_tail
    except (httpx.HTTPError, KeyError, ValueError) as e:
        sd.status, sd.reason = "failed", _request_failure(e, spec)
    except BaseException:  # Ctrl-C or SIGTERM
        spec.stop(grace=ABORT_GRACE_S)
        raise
    finally:
        spec.stop()
        result.spec_log_tail = result.spec_log_tail or spec.log_tail(40)
    return result
