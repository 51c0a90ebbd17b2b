"""`quantkit plan RECIPE`: the jobs a recipe (or a matrix recipe) expands into, with their estimates."""

from __future__ import annotations

import typer

from quantkit.cli.options import JsonOpt, OnlyOpt, OutputDirOpt, RecipeArg, SetOpt
from quantkit.cli.output import human_bytes
from quantkit.cli.render import Column, Output, Rows


def size(n: int | None) -> str:
    return human_bytes(n) if n is not None else "?"


# --json prints describe_plan's rows as they are (every key); the table shows these, figures before names
PLAN_TABLE: tuple[Column[dict], ...] = (
    Column(None, "job", lambda r: r["job"], no_wrap=True),
    Column(None, "method", lambda r: f"{r['method']} {r['scheme']}"),
    Column(None, "runs on", lambda r: r["device"]),
    Column(None, "host RAM", lambda r: r["host_bytes"], format=size, justify="right"),
    Column(None, "GPU memory", lambda r: r["gpu_bytes"], format=lambda n: size(n) if n else "-", justify="right"),
    Column(None, "disk", lambda r: r["disk_bytes"], format=size, justify="right"),
    Column(None, "model", lambda r: r["model"]),
    Column(None, "calibration", lambda r: r["calibration"]),
)


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
    cells = len({r["cell"] for r in rows})
    table = Rows(PLAN_TABLE, rows, title_justify="left",
                 title=f"{recipe}: {len(rows)} job(s) in {cells} cell(s) (a cell's jobs share its resolved model and "
                       "tokenized calibration set)",
                 caption="disk: the artifact's size, estimated from config.json (docs/scaling.md); "
                         "? = the model's config.json is not on this machine yet (it is fetched or converted when the job runs)")
    Output(rows).table(table).emit(as_json)


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
