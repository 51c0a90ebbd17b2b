"""What `quantize` checks before heavy work, cheapest first: local files and output folders of every cell
(seconds, before any model is loaded), then, once the model resolves, the disk space its artifacts need
(quantkit.estimates) and the host memory its outputs need (quantkit.matrix)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from quantkit.artifact import is_artifact
from quantkit.errors import QuantkitError
from quantkit.output_roots import is_url, root_problems, under
from quantkit.recipe import Recipe
from quantkit.sources.models import ResolvedModel


def preflight_problems(recipe: Recipe, output_dir: str | Path | None = None) -> list[str]:
    """What can be known wrong in seconds, before any model is loaded: a local model or calibration
    file that is not there, an output folder that is a file or cannot be written; every cell's."""
    root = output_dir or recipe.output_dir
    found = []
    for cell in recipe.cells():
        for problem in _cell_problems(cell.recipe, under(root, cell.folder)):
            # name the matrix entry, not the cell's expanded field
            if cell.model_index is not None:
                problem = problem.replace("model.source:", f"models[{cell.model_index}].source:", 1)
            if cell.calibration_index is not None:
                problem = problem.replace("calibration.source:", f"calibrations[{cell.calibration_index}].source:", 1)
            found.append(problem)
    return list(dict.fromkeys(found))


def _cell_problems(recipe: Recipe, root: Path | str) -> list[str]:
    problems = []
    src = recipe.model.source
    looks_local = src.startswith((".", "/", "~")) or src.endswith(".gguf") or src.count("/") > 1
    if looks_local and not Path(src).expanduser().exists():
        problems.append(f"model.source: {Path(src).expanduser()} does not exist")
    cal = recipe.calibration.source
    if not cal.startswith(("builtin:", "hf:")) and not Path(cal).expanduser().is_file():
        problems.append(f"calibration.source: calibration file not found: {Path(cal).expanduser()}")
    if is_url(root):
        return problems + root_problems(root, "local")
    root = Path(root)
    existing = next((p for p in [root, *root.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        problems.append(f"output_dir: {existing} is a file, not a folder")
    elif existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"output_dir: {existing} is not writable")
    return problems


def estimated_bytes(output, model: ResolvedModel, dtype: str) -> tuple[int, str]:
    """What an output will take on disk, and what that is estimated from (quantkit.estimates: the same
    figure `quantkit plan` prints)."""
    from quantkit.estimates import disk_need

    try:
        config = json.loads((model.path / "config.json").read_text())
    except (OSError, ValueError):
        config = None
    return disk_need(output, config if isinstance(config, dict) else None, dtype, model.weight_bytes)


def check_free_space(jobs: list, model: ResolvedModel, dtype: str, root: Path) -> None:
    """Refuse a run whose artifacts (`jobs`: (output, destination) pairs) cannot fit, before any calibration work."""
    import shutil

    needs = [estimated_bytes(o, model, dtype) for o, dest in jobs if not is_artifact(dest)]  # a resume needs the rest
    need = sum(n for n, _ in needs)
    basis = " and ".join(sorted({b for _, b in needs})) or "config.json and the schemes"
    existing = next((p for p in [root, *root.parents] if p.exists()), Path("."))
    free = shutil.disk_usage(existing).free
    if need > free:
        raise QuantkitError(f"output_dir {root}: the artifacts need about {need / 1e9:.2f} GB (estimated from {basis}) "
                            f"and {existing} has {free / 1e9:.2f} GB free; free some space, choose "
                            "another --output-dir, or pass --force-space if the estimate is wrong")


def check_memory(recipe: Recipe, outputs: list, model: ResolvedModel) -> None:
    """Refuse, before loading the model, outputs whose estimated peak host memory cannot fit."""
    from quantkit.matrix import available_host_memory, memory_problems

    try:
        config = json.loads((model.path / "config.json").read_text())
    except (OSError, ValueError):
        return
    problems = memory_problems(recipe, outputs, config, available_host_memory())
    if problems:
        raise QuantkitError("\n".join(problems))
