"""`quantkit recipes ...`: check recipes and publish their schema without running anything heavy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from quantkit.cli.options import JsonOpt, OutputDirOpt, RecipeArg, SetOpt
from quantkit.cli.output import Table, console, print_table, say, styled

app = typer.Typer(help="Validate recipes, list the shipped ones, print the JSON schema.", no_args_is_help=True)


@app.command("validate")
def validate_command(recipe: RecipeArg, set_: SetOpt = None, output_dir: OutputDirOpt = None, as_json: JsonOpt = False) -> None:
    """Check RECIPE and print what `quantize` would do with it (no model is loaded).

    Example: quantkit recipes validate recipes/smollm2-135m.yaml
    """
    from quantkit.engines import engine_for
    from quantkit.errors import RecipeError
    from quantkit.quantize import preflight_problems
    from quantkit.recipe_loader import load_recipe

    r = load_recipe(recipe, set_ or [])
    problems = preflight_problems(r, output_dir)
    if problems:
        raise RecipeError(str(recipe), problems)
    from quantkit.matrix import jobs

    selected = jobs(r, output_dir)
    if as_json:
        outputs = [{"name": j.output.name, "job": j.id, "destination": str(j.dest), "method": j.output.method,
                    "scheme": j.output.scheme, "calibrated": engine_for(j.output.method).needs_calibration(j.output),
                    "description": engine_for(j.output.method).describe(j.output)} for j in selected]
        console.print_json(json.dumps({"recipe": str(recipe), "valid": True, "parsed": r.model_dump(mode="json"), "outputs": outputs}))
        return
    say(styled("[bold]{}[/]", recipe), f": recipe '{r.name}' is well-formed.")
    for m in r.models or [r.model]:
        say(f"model: {m.source} ({m.dtype}{', trust_remote_code' if m.trust_remote_code else ''})")
    for cal in r.calibrations or [r.calibration]:
        say(f"calibration: {cal.source} (split {cal.split}), {cal.num_samples} × {cal.seq_len} tokens, "
            f"shuffle seed {cal.shuffle_seed}, chat template {'on' if cal.chat_template else 'off'}")
    if r.is_matrix:
        say(f"a matrix: {len(selected)} jobs in {len(r.cells())} cells (quantkit plan shows their estimates)")
    for j in selected:
        eng = engine_for(j.output.method)
        calibrated = "calibrated" if eng.needs_calibration(j.output) else "no calibration"
        say("• ", styled("[bold]{}[/]", j.output.name), f" → {j.dest}")
        say(f"    {j.output.method} {j.output.scheme}, {calibrated}: {eng.describe(j.output)}")


@app.command("schema")
def schema_command(
    output: Annotated[Optional[Path], typer.Option("--output", help="Write the schema to this file instead of stdout.")] = None,
) -> None:
    """Print the recipe JSON schema (the same as docs/recipe.schema.json)."""
    from quantkit.recipe import recipe_json_schema_text

    text = recipe_json_schema_text()
    if output:
        from quantkit.errors import QuantkitError

        try:
            output.write_text(text)
        except OSError as e:
            raise QuantkitError(f"--output {output}: cannot write it ({e.strerror or e})") from None
        say(f"wrote {output}")
    else:
        typer.echo(text, nl=False)


def shipped_recipes() -> Path:
    """The folder of the recipes shipped with quantkit: the `quantkit_recipes` package (recipes/ of a checkout)."""
    from importlib import resources

    return Path(str(resources.files("quantkit_recipes")))


@app.command("list")
def list_command(
    folder: Annotated[Optional[Path], typer.Argument(help="Folder of recipes (*.yaml, *.yml); default: the recipes shipped with quantkit.", show_default=False)] = None,
    folder_option: Annotated[Optional[Path], typer.Option("--folder", help="The same as FOLDER.", show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the recipes in a folder (default: the ones shipped with quantkit) with their model and outputs.

    Example: quantkit recipes list my-recipes/
    """
    from quantkit.errors import QuantkitError, RecipeError
    from quantkit.recipe_loader import load_recipe

    if folder is not None and folder_option is not None:
        raise QuantkitError(f"recipes list: give the folder once (FOLDER {folder} or --folder {folder_option}), not both")
    folder = folder if folder is not None else folder_option
    if folder is None:
        folder = shipped_recipes()
    elif not folder.is_dir():
        raise QuantkitError(f"recipes list: folder not found: {folder}" if not folder.exists() else
                            f"recipes list: {folder} is not a folder; give the folder that holds the recipes")
    paths = sorted(folder.glob("*.y*ml"))
    if not paths:
        raise QuantkitError(f"recipes list: {folder} holds no recipe (no *.yaml or *.yml file)")
    rows = []
    for p in paths:
        try:
            r = load_recipe(p)
            models = ", ".join(m.source for m in r.models or [r.model])
            rows.append({"recipe": str(p), "valid": True, "model": models, "outputs": [o.name for o in r.outputs]})
        except RecipeError as e:
            rows.append({"recipe": str(p), "valid": False, "error": str(e.problems[0])})
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table()
    table.add_column("recipe", no_wrap=True)
    for col in ("model", "outputs"):
        table.add_column(col)
    for row in rows:
        if row["valid"]:
            table.add_row(row["recipe"], row["model"], ", ".join(row["outputs"]))
        else:
            table.add_row(row["recipe"], styled("[red]invalid[/]"), row["error"])
    print_table(table)
