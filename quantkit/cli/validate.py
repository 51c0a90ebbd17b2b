"""`quantkit validate PATH`: evaluate artifacts against their base, with gates; exit 1 on a failed gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

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
from quantkit.cli.output import Table, err_console, make_reporter, say, sigterm_as_exit, styled
from quantkit.cli.render import Output
from quantkit.cli.serving import ServeTimeoutOpt


def validate_command(
    path: Annotated[Path, typer.Argument(help="An artifact folder, or a folder of artifacts (e.g. out/).", show_default=False)],
    gate: Annotated[Optional[list[str]], typer.Option("--gate", help="Override a gate: KEY=VALUE (kld_mean_max, ppl_increase_max, top1_agreement_min, recovery_min). Repeatable.", show_default=False)] = None,
    context: Annotated[int, typer.Option("--context", help="Tokens per evaluation window.")] = 512,
    stride: Annotated[Optional[int], typer.Option("--stride", help="Window step for transformers runtimes; every scored token has context - stride tokens before it (default: --context / 2, half a context, as llama.cpp).", show_default=False)] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Scored tokens per domain.")] = 4096,
    device: Annotated[str, typer.Option("--device", help="Where models run: auto (the CUDA GPU when torch sees one, else cpu), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="Evaluation dtype: auto (bfloat16 on a GPU, float32 on the CPU), float32, bfloat16 or float16.")] = "auto",
    domain: Annotated[Optional[list[str]], typer.Option("--domain", help="Held-out text: NAME=FILE (.jsonl/.json/.txt/.parquet, field `text`) or NAME=builtin:prose|code. Repeatable; replaces the built-in prose and code domains.", show_default=False)] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="The float base to score against: a folder, hub id ORG/NAME or built-in name (default: the one the artifact records; needed for an artifact made from a folder on another machine). Its fingerprint must match the artifact's record.", show_default=False)] = None,
    allow_base_mismatch: Annotated[bool, typer.Option("--allow-base-mismatch", help="Validate against a base whose fingerprint differs from the one the artifact was made from; validation.json records it.")] = False,
    runtime: Annotated[Optional[str], typer.Option("--runtime", help="The runtime that scores the artifacts (default: each format's own: transformers for compressed-tensors, llama.cpp for GGUF; `quantkit env` lists none others today).", show_default=False)] = None,
    no_write: Annotated[bool, typer.Option("--no-write", help="Print the results only: write no validation.json/md/html (a read-only artifact folder).")] = False,
    task: Annotated[Optional[list[str]], typer.Option("--task", help="lm-eval task to run on base and artifact (e.g. quantkit_docstring_mc, shipped and offline). Repeatable.", show_default=False)] = None,
    task_limit: Annotated[Optional[int], typer.Option("--task-limit", help="Documents per lm-eval task (default: all).", show_default=False)] = None,
    recipe: Annotated[Optional[Path], typer.Option("--recipe", help="Validate the artifacts this recipe writes (in PATH), with the recipe's gates.", show_default=False)] = None,
    serve: Annotated[Optional[bool], typer.Option("--serve/--no-serve", help="vLLM serving smoke test with speculative-decoding speedup (default: on for compressed-tensors artifacts where a vLLM environment exists; --serve makes a missing environment fail its gates).", show_default=False)] = None,
    vllm_python: VllmPythonOpt = None,
    speculative: SpeculativeOpt = "ngram",
    draft: DraftOpt = None,
    concurrency: ConcurrencyOpt = None,
    serve_max_tokens: ServeMaxTokensOpt = 96,
    serve_prompts: ServePromptsOpt = None,
    ready_timeout: ReadyTimeoutOpt = 600.0,
    serve_timeout: ServeTimeoutOpt = None,
    serve_dtype: ServeDtypeOpt = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure perplexity and KL divergence of each artifact against its unquantized base on held-out
    text (built-in prose and code domains), apply the gates, and write validation.json / validation.md
    into each artifact. Exit 0 when every gate passes, 1 when one fails, 2 for bad input.

    Examples:

      quantkit validate out/smollm2-135m-fp8-dynamic

      quantkit validate out/ --gate kld_mean_max=0.05

      quantkit validate out/ --device cuda --dtype bfloat16

      quantkit validate out/ --recipe recipes/smollm2-135m.yaml

      quantkit validate out/my-model-gptq --domain legal=holdout/legal.jsonl --domain code=builtin:code

      quantkit validate out/smollm2-135m-gptq-w4a16 --serve --concurrency 1 --concurrency 8
    """
    from quantkit.gates import parse_gate_overrides
    from quantkit.sources.heldout import load_domains
    from quantkit.validate import validate_run

    overrides = parse_gate_overrides(gate)
    domains = load_domains(domain)
    serve_settings = None
    if serve is not False:
        from quantkit.checks.serve import ServeSettings
        from quantkit.cli.serving import with_serve_timeout

        options = with_serve_timeout(serve_options(speculative, draft, concurrency, serve_max_tokens, serve_prompts,
                                                   ready_timeout, serve_dtype), serve_timeout)
        serve_settings = ServeSettings.discover(options, vllm_python, explicit=bool(serve))
    with sigterm_as_exit(), make_reporter(progress) as reporter:
        reports = validate_run(path, recipe=recipe, reporter=reporter, gate_overrides=overrides, context=context, stride=stride,
                               max_tokens=max_tokens, device=device, dtype=dtype, domains=domains, tasks=task,
                               task_limit=task_limit, serve=serve_settings, base=base,
                               allow_base_mismatch=allow_base_mismatch, write=not no_write, runtime=runtime)
    for r in reports:
        if r.base is not None and not r.base.matches:
            say(f"warning: {r.path.name} was validated against {r.base.path}, whose fingerprint {r.base.fingerprint[:12]} "
                f"differs from the recorded {r.base.recorded_fingerprint[:12]} (--allow-base-mismatch)", target=err_console)
    if not no_write:  # one artifact too: validation.html beside its validation.json
        from quantkit.errors import ArtifactError
        from quantkit.report.html import write_run_report

        try:
            html_path = write_run_report(reports, path)
        except OSError as e:
            raise ArtifactError(f"cannot write validation.html into {path} ({e.strerror or e}); pass --no-write "
                                "to print the results without writing reports") from None
        say(f"run report: {html_path}", target=err_console)
    validation_output(reports).emit(as_json)
    if not as_json:
        for r in reports:
            say(resources_line(r), target=err_console)
    if not all(r.passed for r in reports):
        raise typer.Exit(1)


def validation_output(reports) -> Output:
    """The reports as JSON (validation.json's documents), or the results, the gates, then each check's own table."""
    from quantkit.report.sections import run_sections

    out = Output([r.to_dict() for r in reports]).table(lambda: results_table(reports)).table(lambda: gates_table(reports))
    for section in run_sections(reports):
        out.table(lambda section=section: section_table(section))
    return out


def resources_line(report) -> str:
    from quantkit.cli.output import human_bytes

    res, s = report.resources, report.settings
    gpu = f", GPU peak {human_bytes(res.peak_gpu_bytes)}" if res.peak_gpu_bytes is not None else ""
    return (f"{report.path.name}: {s.device} {s.dtype}, {res.wall_s:.1f} s, "
            f"peak RSS {human_bytes(res.peak_rss_bytes)}{gpu}")


def results_table(reports) -> Table:
    table = Table(title="quantkit validate", title_justify="left")
    table.add_column("target", justify="left", no_wrap=True)
    for col, just in ( ("domain", "left"), ("tokens", "right"), ("base ppl", "right"), ("ppl", "right"),
                      ("mean KLD", "right"), ("top-1", "right"), ("gates", "left")):
        table.add_column(col, justify=just)
    for r in reports:
        for t in r.targets:
            verdict = styled("[green]pass[/]") if t.passed else styled("[red]FAIL[/] ({} of {})", sum(not g.passed for g in t.gates), len(t.gates))
            if t.runtime_unavailable:
                table.add_row(t.target, styled("[yellow]skipped[/]: {}", t.runtime_unavailable), "0", "-", "-", "-", "-", verdict)
            for i, s in enumerate(t.domains):
                table.add_row(t.target if i == 0 else "", s.domain, str(s.n_tokens), f"{s.base_ppl:.3f}", f"{s.ppl:.3f}",
                              f"{s.kld_mean:.4f}", f"{s.top1_agreement:.1%}", verdict if i == 0 else "")
    return table


def gates_table(reports) -> Table:
    table = Table(title="gates", title_justify="left")
    table.add_column("target", justify="left", no_wrap=True)
    for col, just in ( ("gate", "left"), ("value", "right"), ("threshold", "right"), ("", "left")):
        table.add_column(col, justify=just)
    for r in reports:
        for t in r.targets:
            for i, g in enumerate(t.gates):
                op = "≤" if g.gate.endswith("_max") else "≥"
                table.add_row(t.target if i == 0 else "", g.gate, "not measured" if g.value is None else f"{g.value:.4g}",
                              f"{op} {g.threshold:g}", styled("[green]✓[/]") if g.passed else styled("[red]✗ fail[/]"))
    return table


def section_table(section) -> Table:
    """A check's table (quantkit.report.model.Section): the same rows validation.md and validation.html show."""
    table = Table(title=section.title, title_justify="left")
    table.add_column("target", justify="left", no_wrap=True)
    for c in section.columns:
        table.add_column(c.header, justify="right" if c.numeric else "left")
    for row in section.rows:
        table.add_row(*row)
    return table


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_command)
