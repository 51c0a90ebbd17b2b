"""`quantkit serve-test PATH`: serve a model in vLLM, smoke-test it, measure speculative decoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from quantkit.cli.options import (
    ConcurrencyOpt,
    DraftOpt,
    JsonOpt,
    ProgressOpt,
    ReadyTimeoutOpt,
    ServeDtypeOpt,
    ServeMaxTokensOpt,
    ServePromptsOpt,
    SpeculativeOpt,
    VllmPythonOpt,
    serve_options,
)
from quantkit.cli.output import Table, make_reporter, sigterm_as_exit, styled
from quantkit.cli.render import Output

if TYPE_CHECKING:
    from quantkit.serving.verb import ServeReport

ServeTimeoutOpt = Annotated[Optional[float], typer.Option(
    "--serve-timeout", metavar="SECONDS", show_default=False,
    help="Total seconds for serving (both servers' starts and every request). On expiry the server is stopped, "
         "what was measured is kept, the rest is reported as not measured and its gates fail. Default: no limit.")]


def with_serve_timeout(options, seconds: Optional[float]):
    """The ServeOptions with --serve-timeout (validated by ServeOptions: positive and finite)."""
    import dataclasses

    return dataclasses.replace(options, timeout=seconds)


def serve_test_command(
    path: Annotated[Path, typer.Argument(help="A compressed-tensors artifact folder, a model folder (e.g. the float base), or a .gguf file.", show_default=False)],
    vllm_python: VllmPythonOpt = None,
    speculative: SpeculativeOpt = "ngram",
    draft: DraftOpt = None,
    concurrency: ConcurrencyOpt = None,
    serve_max_tokens: ServeMaxTokensOpt = 96,
    serve_prompts: ServePromptsOpt = None,
    ready_timeout: ReadyTimeoutOpt = 600.0,
    serve_timeout: ServeTimeoutOpt = None,
    serve_dtype: ServeDtypeOpt = None,
    gate: Annotated[Optional[list[str]], typer.Option("--gate", help="Override a serving gate: KEY=VALUE (serve_ready_s_max, serve_failed_requests_max, ...). Repeatable.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", help="Also write the JSON report to this file.", show_default=False)] = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start vLLM's OpenAI-compatible server on PATH, send chat and completion requests, compare greedy
    output with transformers, time TTFT/TPOT and tokens/s at each concurrency, then the same workload
    with speculative decoding (speedup, acceptance, identical outputs). Exit 0 when every serving gate
    passes, 1 when one fails, 2 for bad input or no vLLM environment.

    Examples:

      quantkit serve-test out/smollm2-135m-gptq-w4a16

      quantkit serve-test ~/.cache/quantkit/models/<float base> --speculative draft_model --draft out/smollm2-135m-gptq-w4a16
    """
    from quantkit.serving.verb import run_serve_test

    options = with_serve_timeout(
        serve_options(speculative, draft, concurrency, serve_max_tokens, serve_prompts, ready_timeout, serve_dtype), serve_timeout)
    with sigterm_as_exit(), make_reporter(progress) as reporter:
        report = run_serve_test(path, options, vllm_python=vllm_python, gate_overrides=gate, reporter=reporter)
    doc = report.to_dict()
    if output:
        output.write_text(json.dumps(doc, indent=2) + "\n")
    Output(doc).table(lambda: serve_table(report)).emit(as_json)
    if not report.passed:
        raise typer.Exit(1)


def serve_table(report: "ServeReport | dict") -> Table:
    """serve-test's table: the report, or its JSON (`--json`, `--output`)."""
    from quantkit.serving.results import not_measured_by_reason
    from quantkit.serving.verb import ServeReport

    report = report if isinstance(report, ServeReport) else ServeReport.from_dict(report)
    r = report.result
    t = Table(title=f"quantkit serve-test: {Path(r.model).name}", title_justify="left")
    t.add_column("measure", justify="left")
    t.add_column("value", justify="left")
    t.add_row("status", r.status + (f" ({r.reason})" if r.reason else ""))
    t.add_row("vLLM", r.vllm_label)
    if r.serving_class:
        t.add_row("serving class", r.serving_class)
    if r.kernel_library:
        t.add_row("vLLM kernel library", r.kernel_library)
    t.add_row("time to ready", "-" if r.ready_s is None else f"{r.ready_s:.1f} s")
    t.add_row("quantization (vLLM / artifact)", f"{r.quantization} / {r.expected_quantization}")
    if g := r.greedy:
        t.add_row("greedy agreement with transformers", "-" if g.agreeing_tokens is None else f"{g.agreeing_tokens} / {g.tokens} tokens")
    if r.smoke:
        t.add_row("smoke requests", f"{r.smoke.requests - r.smoke.failed} / {r.smoke.requests} ok")
    sd = r.speculative
    for c, p in r.performance.items():
        line = (f"{p.output_tokens_per_s:.1f} tok/s, TTFT p50/p95 {_ms(p.ttft_p50_s)}/{_ms(p.ttft_p95_s)}, "
                f"TPOT p50/p95 {_ms(p.tpot_p50_s)}/{_ms(p.tpot_p95_s)}")
        t.add_row(f"concurrency {c}", line)
        sp = sd.performance.get(c) if sd else None
        if sp:
            acc = sd.acceptance.get(c)
            rate, length = (acc.acceptance_rate, acc.mean_acceptance_length) if acc else (None, None)
            t.add_row(f"  with {sd.method}", f"{sp.output_tokens_per_s:.1f} tok/s, speedup {_num(sd.speedup.get(c), '.2f')}x, "
                      f"acceptance {_num(rate, '.0%')}, mean acceptance length {_num(length, '.2f')}")
    if sd and sd.compared_outputs is not None:
        t.add_row("speculative outputs identical", f"{sd.compared_outputs - sd.mismatches} / {sd.compared_outputs}")
    elif sd and sd.reason and sd.status != "not measured":
        t.add_row("speculative", f"failed: {sd.reason}")
    plan = r.plan
    if plan and plan.short_because:
        t.add_row("short workload", f"{plan.smoke_requests} smoke, {plan.workload_requests} prompt(s) x "
                                    f"{plan.max_tokens} tokens: {plan.short_because}")
    for why, phases in not_measured_by_reason(r.not_measured).items():
        t.add_row(why, ", ".join(phases))
    unmeasured = r.unmeasured_metrics()
    for g in report.gates:
        mark = "[green]✓[/]" if g.passed else "[red]✗[/]"
        op = "≤" if g.gate.endswith("_max") else "≥"
        value = _num(g.value, ".4g") if g.value is not None else unmeasured.get(g.metric, "not measured")
        t.add_row(f"gate {g.gate}", styled(mark + " {} ({} {})", value, op, g.threshold))
    return t


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def register(app: typer.Typer) -> None:
    app.command("serve-test")(serve_test_command)
