"""`quantkit quantize RECIPE`: produce every output of a recipe."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from quantkit.cli.options import ForceOpt, JsonOpt, OnlyOpt, OutputDirOpt, ProgressOpt, RecipeArg, SetOpt
from quantkit.cli.output import console, human_bytes, library_logs_to_stderr, make_reporter, print_table, sigterm_as_exit


def quantize_command(
    recipe: RecipeArg,
    set_: SetOpt = None,
    output_dir: OutputDirOpt = None,
    only: OnlyOpt = None,
    force: ForceOpt = False,
    force_space: Annotated[bool, typer.Option("--force-space", help="Start even when the estimated artifact size exceeds the free disk space.")] = False,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Quantize a model into every output of RECIPE (AWQ, GPTQ, INT8, FP8, RTN, GGUF).

    Examples:

      quantkit quantize recipes/smollm2-135m.yaml

      quantkit quantize recipes/smollm2-135m.yaml --only smollm2-135m-fp8-dynamic --force

      quantkit quantize recipes/smollm2-135m.yaml --set calibration.num_samples=16 -o /tmp/out
    """
    from quantkit.engines import engine_for
    from quantkit.quantize import QuantizeFailed, quantize
    from quantkit.recipe_loader import load_recipe

    parsed = load_recipe(recipe, set_ or [])
    if any(engine_for(o.method).in_process_torch for o in parsed.outputs):
        library_logs_to_stderr()  # imports llm-compressor: only for a recipe that will run it
    artifacts, failed = [], None
    with sigterm_as_exit(), make_reporter(progress) as reporter:
        try:
            artifacts = quantize(parsed, output_dir=output_dir, only=only, force=force, reporter=reporter,
                                 force_space=force_space)
        except QuantizeFailed as e:
            artifacts, failed = e.artifacts, e
    if as_json:
        console.print_json(json.dumps([{"path": str(a.path), **_row(a)} for a in artifacts]))
    else:
        print_table(results_table(artifacts))
    if failed:
        raise failed


def _ratio_text(a) -> str:
    m = a.manifest
    if m.format == "gguf":  # several files, each a full model: the ratio of each file is what matters
        ratios = sorted(m.base_model.weight_bytes / t.bytes for t in a.targets() if t.bytes)
        if ratios:
            return f"{ratios[0]:.2f}–{ratios[-1]:.2f}x/file"
    return f"{m.compression_ratio:.2f}x" if m.compression_ratio else "-"


def _row(a) -> dict:
    m = a.manifest
    return {
        "name": a.name,
        "method": m.method,
        "scheme": m.scheme,
        "size_bytes": m.size_bytes,
        "compression_ratio": m.compression_ratio,
        "time_s": m.timings_s["total_s"],
        "peak_rss_bytes": m.peak_rss_bytes,
    }


def results_table(artifacts) -> Table:
    folders = sorted({str(a.path.parent) for a in artifacts})
    table = Table(title="quantkit quantize", title_justify="left", caption=f"written to {', '.join(folders)}" if folders else None)
    table.add_column("artifact", justify="left", no_wrap=True)
    for col, just in (("method", "left"), ("scheme", "left"), ("size", "right"),
                      ("vs float", "right"), ("time", "right"), ("peak RSS", "right")):
        table.add_column(col, justify=just)
    for a in artifacts:
        r = _row(a)
        table.add_row(
            a.name, r["method"], r["scheme"], human_bytes(r["size_bytes"]),
            _ratio_text(a),
            f"{r['time_s']:.1f} s", human_bytes(r["peak_rss_bytes"]),
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_command)
    app.command("status")(status_command)


def status_command(
    recipe: RecipeArg,
    set_: SetOpt = None,
    output_dir: OutputDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Where each output of RECIPE stands: up to date, to redo (which inputs changed), or not made;
    and the staging folders of runs in progress or killed. Loads no model weights.

    Example: quantkit status recipes/smollm2-135m.yaml -o out
    """
    from quantkit.quantize import status
    from quantkit.recipe_loader import load_recipe

    parsed = load_recipe(recipe, set_ or [])
    with sigterm_as_exit(), make_reporter(None) as reporter:
        rows = status(parsed, output_dir, reporter)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"{recipe}: {sum(r['state'] == 'up to date' for r in rows)} of {len(rows)} outputs up to date",
                  title_justify="left")
    for col in ("output", "state", "why", "runs"):
        table.add_column(col)
    for r in rows:
        runs = [f"running (pid {x['pid']})" for x in r["running"]] + [f"killed run's staging (pid {x['pid']})"
                                                                      for x in r["stale_partials"]]
        table.add_row(r["output"], r["state"], r["reason"], ", ".join(runs))
    print_table(table)
