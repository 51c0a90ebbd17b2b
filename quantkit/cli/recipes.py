"""`quantkit recipes ...`: check recipes and publish their schema without running anything heavy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from quantkit.cli.options import OutputDirOpt, RecipeArg, SetOpt
from quantkit.cli.output import console

app = typer.Typer(help="Validate recipes, list the shipped ones, print the JSON schema.", no_args_is_help=True)


@app.command("validate")
def validate_command(recipe: RecipeArg, set_: SetOpt = None, output_dir: OutputDirOpt = None) -> None:
    """Check RECIPE and print what `quantize` would do with it (no model is loaded).

    Example: quantkit recipes validate recipes/smollm2-135m.yaml
    """
    from quantkit.engines import engine_for
    from quantkit.quantize import plan
    from quantkit.recipe import load_recipe

    r = load_recipe(recipe, set_ or [])
    cal = r.calibration
    console.print(f"[bold]{recipe}[/]: recipe '{r.name}' is well-formed.", highlight=False)
    console.print(f"model: {r.model.source} ({r.model.dtype}{', trust_remote_code' if r.model.trust_remote_code else ''})", highlight=False)
    console.print(
        f"calibration: {cal.source} (split {cal.split}), {cal.num_samples} × {cal.seq_len} tokens, "
        f"shuffle seed {cal.shuffle_seed}, chat template {'on' if cal.chat_template else 'off'}",
        highlight=False,
    )
    for out, dest in plan(r, output_dir):
        eng = engine_for(out.method)
        calibrated = "calibrated" if eng.needs_calibration(out) else "no calibration"
        console.print(f"• [bold]{out.name}[/] → {dest}", highlight=False)
        console.print(f"    {out.method} {out.scheme}, {calibrated}: {eng.describe(out)}", highlight=False)


@app.command("schema")
def schema_command(
    output: Annotated[Optional[Path], typer.Option("--output", help="Write the schema to this file instead of stdout.")] = None,
) -> None:
    """Print the recipe JSON schema (the same as docs/recipe.schema.json)."""
    from quantkit.recipe import recipe_json_schema_text

    text = recipe_json_schema_text()
    if output:
        output.write_text(text)
        console.print(f"wrote {output}")
    else:
        typer.echo(text, nl=False)


@app.command("list")
def list_command(
    folder: Annotated[Path, typer.Option("--folder", help="Folder of recipes.")] = Path("recipes"),
) -> None:
    """List the recipes in a folder with their model and outputs."""
    from quantkit.errors import RecipeError
    from quantkit.recipe import load_recipe

    table = Table()
    for col in ("recipe", "model", "outputs"):
        table.add_column(col)
    for p in sorted(folder.glob("*.y*ml")):
        try:
            r = load_recipe(p)
            table.add_row(str(p), r.model.source, ", ".join(o.name for o in r.outputs))
        except RecipeError as e:
            table.add_row(str(p), "[red]invalid[/]", str(e.problems[0]))
    console.print(table)
