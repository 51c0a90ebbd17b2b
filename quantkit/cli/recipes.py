"""`quantkit recipes ...`: check recipes and publish their schema without running anything heavy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from quantkit.cli.options import JsonOpt, OutputDirOpt, RecipeArg, SetOpt
from quantkit.cli.output import say, styled
from quantkit.cli.render import Column, Output, Rows

if TYPE_CHECKING:
    from quantkit.jobs import Job

app = typer.Typer(help="Validate recipes, list the shipped ones, print the JSON schema.", no_args_is_help=True)


def _engine(job: Job):
    from quantkit.engines import engine_for

    return engine_for(job.output.method)


# what `quantize` would make of each job (JSON only: the human rendering is a bullet list)
JOB_COLUMNS: tuple[Column[Job], ...] = (
    Column("name", None, lambda j: j.output.name),
    Column("job", None, lambda j: j.id),
    Column("destination", None, lambda j: str(j.dest)),
    Column("method", None, lambda j: j.output.method),
    Column("scheme", None, lambda j: j.output.scheme),
    Column("calibrated", None, lambda j: _engine(j).needs_calibration(j.output)),
    Column("description", None, lambda j: _engine(j).describe(j.output)),
)


@app.command("validate")
def validate_command(recipe: RecipeArg, set_: SetOpt = None, output_dir: OutputDirOpt = None, as_json: JsonOpt = False) -> None:
    """Check RECIPE and print what `quantize` would do with it (no model is loaded).

    Example: quantkit recipes validate recipes/smollm2-135m.yaml
    """
    from quantkit.errors import RecipeError
    from quantkit.preflight import preflight_problems
    from quantkit.recipe_loader import load_recipe

    r = load_recipe(recipe, set_ or [])
    problems = preflight_problems(r, output_dir)
    if problems:
        raise RecipeError(str(recipe), problems)
    from quantkit.jobs import plan

    selected = Rows(JOB_COLUMNS, plan(r, output_dir))
    out = Output({"recipe": str(recipe), "valid": True, "parsed": r.model_dump(mode="json"), "outputs": selected.json()})
    out.line(styled("[bold]{}[/]", recipe), f": recipe '{r.name}' is well-formed.")
    for m in r.models or [r.model]:
        out.line(f"model: {m.source} ({m.dtype}{', trust_remote_code' if m.trust_remote_code else ''})")
    for cal in r.calibrations or [r.calibration]:
        out.line(f"calibration: {cal.source} (split {cal.split}), {cal.num_samples} × {cal.seq_len} tokens, "
                 f"shuffle seed {cal.shuffle_seed}, chat template {'on' if cal.chat_template else 'off'}")
    if r.is_matrix:
        out.line(f"a matrix: {len(selected.records)} jobs in {len(r.cells())} cells (quantkit plan shows their estimates)")
    for j in selected.records:
        calibrated = "calibrated" if _engine(j).needs_calibration(j.output) else "no calibration"
        out.line("• ", styled("[bold]{}[/]", j.output.name), f" → {j.dest}")
        out.line(f"    {j.output.method} {j.output.scheme}, {calibrated}: {_engine(j).describe(j.output)}")
    out.emit(as_json)


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
    listed = []
    for p in paths:
        try:
            r = load_recipe(p)
            models = ", ".join(m.source for m in r.models or [r.model])
            listed.append(ListedRecipe(str(p), True, model=models, outputs=[o.name for o in r.outputs]))
        except RecipeError as e:
            listed.append(ListedRecipe(str(p), False, error=str(e.problems[0])))
    Rows(LISTED_COLUMNS, listed).emit(as_json)


@dataclass(frozen=True)
class ListedRecipe:
    """One recipe file of `recipes list`: its model and outputs, or why it does not load."""

    recipe: str
    valid: bool
    model: str | None = None
    outputs: list[str] | None = None
    error: str | None = None


# an invalid recipe's row says so where the model would be, and why where the outputs would be
LISTED_COLUMNS: tuple[Column[ListedRecipe], ...] = (
    Column("recipe", "recipe", lambda r: r.recipe, no_wrap=True),
    Column("valid", None, lambda r: r.valid),
    Column("model", "model", lambda r: r.model, omit_none=True, cell=lambda r: r.model if r.valid else styled("[red]invalid[/]")),
    Column("outputs", "outputs", lambda r: r.outputs, omit_none=True, cell=lambda r: ", ".join(r.outputs) if r.valid else r.error),
    Column("error", None, lambda r: r.error, omit_none=True),
)
