"""`quantkit plan RECIPE`: the jobs a recipe (or a matrix recipe) expands into, with their estimates."""

from __future__ import annotations

import json

import typer

from quantkit.cli.options import JsonOpt, OnlyOpt, OutputDirOpt, RecipeArg, SetOpt
from quantkit.cli.output import Table, console, human_bytes, print_table


def plan_command(
    recipe: RecipeArg,
    set_: SetOpt = None,
    output_dir: OutputDirOpt = None,
    only: OnlyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the job graph of RECIPE: one job per model × calibration set × output, each with its
    estimated peak host memory, GPU memory, disk, and where it runs. Loads no weights.

    Example: quantkit plan recipes/smollm2-135m.yaml (`quantkit recipes list` shows the shipped recipes)
    """
    from quantkit.matrix import describe_plan
    from quantkit.recipe_loader import load_recipe

    parsed = load_recipe(recipe, set_ or [])
    rows = describe_plan(parsed, output_dir, only)
    if as_json:
        console.print_json(json.dumps(rows))
        return
    cells = len({r["cell"] for r in rows})

    def size(n):
        return human_bytes(n) if n is not None else "?"

    table = Table(title=f"{recipe}: {len(rows)} job(s) in {cells} cell(s) (a cell's jobs share its resolved model and "
                        "tokenized calibration set)", title_justify="left",
                  caption="disk: the artifact's size, estimated from config.json (docs/scaling.md); "
                          "? = the model's config.json is not on this machine yet (it is fetched or converted when the job runs)")
    for col in ("job", "method", "runs on", "host RAM", "GPU memory", "disk", "model", "calibration"):
        table.add_column(col, no_wrap=col == "job", justify="right" if col in ("host RAM", "GPU memory", "disk") else "left")
    for r in rows:
        table.add_row(r["job"], f"{r['method']} {r['scheme']}", r["device"], size(r["host_bytes"]),
                      size(r["gpu_bytes"]) if r["gpu_bytes"] else "-", size(r["disk_bytes"]), r["model"], r["calibration"] or "-")
    print_table(table)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
