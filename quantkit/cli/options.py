"""Typed option aliases shared by every command, so each option is spelled one way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file (see `recipes/` and docs/recipes.md).", show_default=False)]
ArtifactArg = Annotated[Path, typer.Argument(help="Artifact folder written by `quantkit quantize`.", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set",
        help="Override a recipe field before validation: KEY=VALUE, dotted path, VALUE parsed as YAML "
        "(e.g. --set calibration.num_samples=16 --set outputs.0.group_size=64). Repeatable.",
        show_default=False,
    ),
]
OutputDirOpt = Annotated[
    Optional[Path], typer.Option("--output-dir", "-o", help="Folder for the artifacts (default: the recipe's output_dir).", show_default=False)
]
OnlyOpt = Annotated[
    Optional[list[str]], typer.Option("--only", help="Produce only this output (by name). Repeatable.", show_default=False)
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace artifacts that already exist.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show the libraries' own logs and progress bars.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
