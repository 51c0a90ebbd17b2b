"""`quantkit.quantize`: recipe -> artifacts.

Order matters for the user's time: everything that can be checked cheaply (recipe,
destinations, model source, scheme vs. layer shapes) is checked before the first
calibration pass, so a typo or an impossible group size fails in seconds, not minutes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from quantkit.artifact import Artifact, is_artifact, library_versions, utc_now, write_manifest
from quantkit.device import accelerator_available
from quantkit.engines import EngineJob, engine_for
from quantkit.errors import QuantkitError, RecipeError
from quantkit.files import check_destination, folder_size, staged_folder
from quantkit.memory import PeakRSS
from quantkit.progress import NullReporter, Reporter
from quantkit.recipe import Recipe
from quantkit.sources.calibration import CalibrationSet, build_calibration
from quantkit.sources.models import ResolvedModel, load_tokenizer, resolve_model


@dataclass
class OutputFailure:
    name: str
    error: str


class QuantizeFailed(QuantkitError):
    """Some outputs failed; the others were written. Exit code 1 (a run failure, not bad input)."""

    exit_code = 1

    def __init__(self, artifacts: list[Artifact], failures: list[OutputFailure]):
        self.artifacts = artifacts
        self.failures = failures
        lines = "\n".join(f"  - {f.name}: {f.error}" for f in failures)
        super().__init__(f"{len(failures)} output(s) failed, wholly or in part:\n{lines}")


def preflight_problems(recipe: Recipe, output_dir: str | Path | None = None) -> list[str]:
    """What can be known wrong in seconds, before any model is loaded: a local model or calibration
    file that is not there, an output folder that is a file or cannot be written."""
    import os

    problems = []
    src = recipe.model.source
    looks_local = src.startswith((".", "/", "~")) or src.endswith(".gguf") or src.count("/") > 1
    if looks_local and not Path(src).expanduser().exists():
        problems.append(f"model.source: {Path(src).expanduser()} does not exist")
    cal = recipe.calibration.source
    if not cal.startswith(("builtin:", "hf:")) and not Path(cal).expanduser().is_file():
        problems.append(f"calibration.source: calibration file not found: {Path(cal).expanduser()}")
    root = Path(output_dir or recipe.output_dir)
    existing = next((p for p in [root, *root.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        problems.append(f"output_dir: {existing} is a file, not a folder")
    elif existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"output_dir: {existing} is not writable")
    return problems


def plan(recipe: Recipe, output_dir: str | Path | None = None, only: list[str] | None = None) -> list[tuple[object, Path]]:
    """The outputs that will be written and where; validates `only` against the recipe."""
    root = Path(output_dir or recipe.output_dir)
    names = [o.name for o in recipe.outputs]
    for n in only or []:
        if n not in names:
            raise QuantkitError(f"--only {n}: the recipe has no output of that name; outputs: {', '.join(names)}")
    return [(o, root / o.name) for o in recipe.outputs if not only or o.name in only]


def quantize(
    recipe: Recipe,
    *,
    output_dir: str | Path | None = None,
    only: list[str] | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    keep_going: bool = True,
) -> list[Artifact]:
    """Produce every (or the `only`) outputs of `recipe`; returns the artifacts written.

    Raises QuantkitError before any heavy work for bad input, and QuantizeFailed after the
    run if some outputs failed (the others are complete and on disk).
    """
    reporter = reporter or NullReporter()
    problems = preflight_problems(recipe, output_dir)
    if problems:
        raise RecipeError(recipe.name, problems)
    jobs = plan(recipe, output_dir, only)
    for _, dest in jobs:
        check_destination(dest, force, is_artifact)

    if not accelerator_available():
        reporter.log("no accelerator found: quantizing on CPU")
    model = resolve_model(recipe.model, reporter)
    for output, _ in jobs:
        engine_for(output.method).preflight(output, model)

    calibration = None
    if any(engine_for(o.method).needs_calibration(o) for o, _ in jobs):
        with reporter.task(f"tokenizing calibration set {recipe.calibration.source}"):
            calibration = build_calibration(recipe.calibration, load_tokenizer(model))
        reporter.log(
            f"calibration: {len(calibration.input_ids)} × {recipe.calibration.seq_len} tokens "
            f"from {recipe.calibration.source}, fingerprint {calibration.fingerprint[:12]}"
        )

    artifacts: list[Artifact] = []
    failures: list[OutputFailure] = []
    for i, (output, dest) in enumerate(jobs, 1):
        reporter.log(f"[{i}/{len(jobs)}] {output.name} ({output.method} {output.scheme})")
        try:
            artifact, partial_failures = _produce(recipe, output, dest, model, calibration, force, reporter)
            artifacts.append(artifact)
            if partial_failures:
                failures.append(OutputFailure(output.name, "; ".join(partial_failures)))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - one failed output must not lose the others
            if not keep_going:
                raise
            failures.append(OutputFailure(output.name, f"{type(e).__name__}: {e}"))
            reporter.log(f"[red]{output.name} failed: {type(e).__name__}: {e}")
    if failures:
        raise QuantizeFailed(artifacts, failures)
    return artifacts


def _produce(
    recipe, output, dest: Path, model: ResolvedModel, calibration: CalibrationSet | None, force: bool, reporter
) -> tuple[Artifact, list[str]]:
    engine = engine_for(output.method)
    started = time.perf_counter()
    with staged_folder(dest, force=force, replaceable=is_artifact) as staging, PeakRSS() as peak:
        uses_cal = engine.needs_calibration(output)
        result = engine.run(EngineJob(recipe, output, model, calibration if uses_cal else None, staging, reporter))
        total = round(time.perf_counter() - started, 3)
        manifest = {
            "name": output.name,
            "created": utc_now(),
            "format": result.format,
            "output": output.model_dump(mode="json"),
            "scheme": output.scheme,
            "description": engine.describe(output),
            "recipe": recipe.model_dump(mode="json"),
            "base_model": model.manifest_entry(),
            "calibration": calibration.manifest_entry() if (uses_cal and calibration) else None,
            "libraries": library_versions(),
            "engine": {"name": engine.name, **result.details},
            "failures": result.failures,
            "timings_s": {**result.timings_s, "total_s": total},
            "peak_rss_bytes": peak.read(),
            "peak_rss_method": peak.method,
        }
        manifest["compression_ratio"] = round(model.weight_bytes / max(folder_size(staging), 1), 3)
        manifest = write_manifest(staging, manifest)
    return Artifact(dest, manifest), result.failures
