"""`quantkit.quantize`: recipe -> artifacts, in this process.

The recipe is planned into jobs (quantkit.jobs: a plain recipe is a matrix of one cell) and the jobs run
cell after cell: a cell's outputs share its resolved model and tokenized calibration set. The executors
(quantkit.executors) run the same jobs elsewhere, each as a `quantkit quantize` of one output.

Order matters for the user's time: everything that can be checked cheaply (recipe,
destinations, model source, scheme vs. layer shapes) is checked before the first
calibration pass, so a typo or an impossible group size fails in seconds, not minutes.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from quantkit.artifact import LOCAL_NAME, Artifact, Manifest, is_artifact, library_versions, utc_now, write_manifest
from quantkit.artifact_files import admit_files, remove_own_files, replace_problem
from quantkit.coverage import refuse_uncovered, target_coverage
from quantkit.device import accelerator_available
from quantkit.engines import EngineJob, engine_for
from quantkit.errors import ArtifactError, QuantkitError, RecipeError
from quantkit.files import exclusive_outputs, folder_size, remove_stale_partials, staged_folder
from quantkit.formats import format_named
from quantkit.jobs import DEFAULT_OPTIONS, ArtifactSummary, Job, JobResult, QuantizeRun, RunOptions, Status, by_cell, plan
from quantkit.memory import PeakRSS
from quantkit.output_roots import is_url
from quantkit.preflight import check_free_space, check_memory, preflight_problems
from quantkit.progress import NullReporter, Reporter
from quantkit.recipe import Recipe
from quantkit.resume import OutputState, input_fingerprints, output_state
from quantkit.sources.calibration import CalibrationSet, build_calibration
from quantkit.sources.models import ResolvedModel, load_tokenizer, resolve_model


@dataclass
class OutputFailure:
    name: str  # the job's id (the output's name, for a plain recipe)
    error: str


class QuantizeFailed(QuantkitError):
    """Some outputs failed; the others were written. Exit code 1 (a run failure, not bad input)."""

    exit_code = 1

    def __init__(self, artifacts: list[Artifact], failures: list[OutputFailure]):
        self.artifacts = artifacts
        self.failures = failures
        lines = "\n".join(f"  - {f.name}: {f.error}" for f in failures)
        super().__init__(f"{len(failures)} output(s) failed, wholly or in part:\n{lines}")


def quantize(
    recipe: Recipe,
    *,
    output_dir: str | Path | None = None,
    only: list[str] | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
    keep_going: bool = True,
    force_space: bool = False,
    force_memory: bool = False,
) -> list[Artifact]:
    """Produce every (or the `only`) outputs of `recipe`; returns the artifacts (written, or kept because
    their recorded input fingerprints match: `force` redoes those too).

    Raises QuantkitError before any heavy work for bad input, and QuantizeFailed after the
    run if some outputs failed (the others are complete and on disk).
    """
    options = RunOptions(force=force, force_space=force_space, force_memory=force_memory, keep_going=keep_going)
    run = quantize_run(recipe, output_dir=output_dir, only=only, options=options, reporter=reporter)
    if run.failed:
        raise QuantizeFailed(run.artifacts, [OutputFailure(r.id, r.error or "failed") for r in run.failed])
    return run.artifacts


def quantize_run(recipe: Recipe, *, output_dir: str | Path | None = None, only: list[str] | None = None,
                 options: RunOptions = DEFAULT_OPTIONS, reporter: Reporter | None = None) -> QuantizeRun:
    """quantize(), returning every job's result (made, kept or failed) instead of raising for failed ones.
    Bad input is still raised, before any heavy work."""
    root = output_dir or recipe.output_dir
    if is_url(root):
        raise QuantkitError(f"output_dir {root}: quantize() writes to a folder; a URL root is "
                            "published to by the executors (`quantkit quantize RECIPE -o URL`, or quantkit.executors.run_jobs)")
    selected = plan(recipe, root, only)
    problems = preflight_problems(recipe, root)
    if problems:
        raise RecipeError(recipe.name, problems)
    return run_in_process(selected, options, reporter)


def run_in_process(jobs: list[Job], options: RunOptions = DEFAULT_OPTIONS, reporter: Reporter | None = None) -> QuantizeRun:
    """Run `jobs` here, cell after cell, every cell's destinations checked before it starts. A cell refused
    for bad input (exit 2) stops the run, unless `options.keep_going` and other cells remain to be made:
    then its jobs fail and the others run on."""
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    cells = by_cell(jobs)
    run = QuantizeRun([])
    for n, (cell, cell_jobs) in enumerate(cells, 1):
        if len(cells) > 1 or cell.folder:
            reporter.log(f"cell {n}/{len(cells)}: {cell.folder or '.'} ({cell.recipe.model.source}, "
                         f"{len(cell_jobs)} output(s))")
        try:
            outcomes = _run_cell(cell.recipe, cell_jobs, options, reporter)
        except QuantkitError as e:
            if not options.keep_going or len(cells) == 1:
                raise
            reporter.log(f"{cell.folder or '.'} failed: {e}", style="red")
            outcomes = [(JobResult(j.id, j.output.name, "failed", str(j.dest), error=str(e)), None) for j in cell_jobs]
        for result, artifact in outcomes:
            run.results.append(result)
            if artifact is not None:
                run.artifacts.append(artifact)
    run.seconds = time.perf_counter() - started
    return run


Outcome = tuple[JobResult, "Artifact | None"]


def _run_cell(recipe: Recipe, jobs: list[Job], options: RunOptions, reporter: Reporter) -> list[Outcome]:
    dests = [Path(j.dest) for j in jobs]
    for dest in dests:  # what is there must be ours (an artifact holding only quantkit's files), else refused
        problem = replace_problem(dest)
        if problem:
            raise ArtifactError(problem)
    with exclusive_outputs(dests):  # a second run on the same outputs is refused now, not later
        return _run(recipe, jobs, options, reporter)


def _run(recipe: Recipe, jobs: list[Job], options: RunOptions, reporter: Reporter) -> list[Outcome]:
    pairs = [(j.output, Path(j.dest)) for j in jobs]
    if any(engine_for(o.method).in_process_torch for o, _ in pairs) and not accelerator_available():
        reporter.log("no accelerator found: quantizing on CPU")
    model = resolve_model(recipe.model, reporter)
    for output, _ in pairs:
        engine_for(output.method).preflight(output, model)
    if not options.force_space:
        check_free_space(pairs, model, recipe.model.dtype, pairs[0][1].parent)
    if not options.force_memory:
        check_memory(recipe, [o for o, dest in pairs if options.force or not is_artifact(dest)], model)
    engines = {engine_for(o.method) for o, _ in pairs}
    try:
        for output, dest in pairs:
            if options.force or not dest.exists():  # an existing output may be kept: nothing to start for it yet
                engine_for(output.method).start(output, model)
        return _make(recipe, jobs, model, options, reporter)
    finally:
        for engine in engines:
            engine.abandon()


def _outcome(job: Job, status: Status, started: float, artifact: Artifact | None, error: str | None = None) -> Outcome:
    result = JobResult(job.id, job.output.name, status, str(job.dest), attempts=0 if status == "kept" else 1,
                       seconds=round(time.time() - started, 2), started_at=round(started, 3),
                       ended_at=round(time.time(), 3), host=socket.gethostname(), pid=os.getpid(), error=error,
                       failed_at="quantize" if status == "failed" else None,
                       artifact=ArtifactSummary.of(artifact.manifest) if artifact else None)
    return result, artifact


def _make(recipe: Recipe, jobs: list[Job], model: ResolvedModel, options: RunOptions, reporter: Reporter) -> list[Outcome]:
    calibration = None
    if any(engine_for(j.output.method).needs_calibration(j.output) for j in jobs):
        with reporter.task(f"tokenizing calibration set {recipe.calibration.source}"):
            calibration = build_calibration(recipe.calibration, load_tokenizer(model))
        reporter.log(
            f"calibration: {len(calibration.input_ids)} × {recipe.calibration.seq_len} tokens "
            f"from {recipe.calibration.source}, fingerprint {calibration.fingerprint[:12]}"
        )

    outcomes: list[Outcome] = []
    made = 0
    for i, job in enumerate(jobs, 1):
        output, dest, started = job.output, Path(job.dest), time.time()
        # an output not made yet needs its input fingerprints only for its manifest: the base's hash then
        # keeps running in the background while this output calibrates (sources.models.fingerprint_later)
        inputs = input_fingerprints(recipe, output, model, calibration) if dest.exists() else None
        state = output_state(dest, inputs) if inputs else OutputState(True, False, "not made yet")
        if state.current and not options.force:
            remove_stale_partials(dest)
            reporter.log(f"[{i}/{len(jobs)}] {output.name}: up to date (inputs unchanged), kept")
            outcomes.append(_outcome(job, "kept", started, state.artifact))
            continue
        why = "" if state.missing else f"; {'--force' if state.current else state.reason}: redoing it"
        reporter.log(f"[{i}/{len(jobs)}] {output.name} ({output.method} {output.scheme}){why}")
        if made:
            gc.collect()  # the previous output's model, held in reference cycles (0.26 s: not paid by a single output)
        made += 1
        try:
            artifact, partial_failures = _produce(recipe, output, dest, model, calibration, inputs, reporter)
            outcomes.append(_outcome(job, "failed" if partial_failures else "made", started, artifact,
                                     "; ".join(partial_failures) or None))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - one failed output must not lose the others
            if not options.keep_going:
                raise
            outcomes.append(_outcome(job, "failed", started, None, f"{type(e).__name__}: {e}"))
            reporter.log(f"{output.name} failed: {type(e).__name__}: {e}", style="red")
    return outcomes


def _relative(value: str, root: Path) -> str:
    """An absolute local path as a path relative to the output root (sources are recorded as given otherwise)."""
    p = Path(value).expanduser()
    return os.path.relpath(p, root.resolve()) if p.is_absolute() else value


def _relative_sources(recipe: dict, root: Path) -> dict:
    recipe["model"]["source"] = _relative(recipe["model"]["source"], root)
    recipe["calibration"]["source"] = _relative(recipe["calibration"]["source"], root)
    for matrix_field in ("models", "calibrations"):  # a matrix cell's recipe keeps its lists' sources
        for entry in recipe.get(matrix_field) or []:
            if isinstance(entry, dict) and isinstance(entry.get("source"), str):
                entry["source"] = _relative(entry["source"], root)
    recipe["output_dir"] = _relative(recipe["output_dir"], root)
    return recipe


def _without_local_paths(model: ResolvedModel, root: Path) -> tuple[dict, dict]:
    """The manifest's base-model record with no absolute path, and the local side file that keeps them."""
    entry = model.manifest_entry()
    local = {"base_model_path": entry["path"]}
    entry["path"] = ""
    entry["source"] = _relative(entry["source"], root)
    if "gguf_file" in entry["origin"]:
        local["gguf_file"] = entry["origin"]["gguf_file"]
        entry["origin"]["gguf_file"] = _relative(entry["origin"]["gguf_file"], root)
    return entry, local


def _produce(
    recipe, output, dest: Path, model: ResolvedModel, calibration: CalibrationSet | None, inputs: dict | None, reporter
) -> tuple[Artifact, list[str]]:
    engine = engine_for(output.method)
    started = time.perf_counter()

    def discard_replaced(old: Path) -> None:  # the artifact replaced: only the files quantkit wrote go
        left = remove_own_files(old)
        if left:
            reporter.log(f"kept {len(left)} file(s) quantkit did not write in {old} ({', '.join(left[:3])})")

    # replaces only a quantkit artifact holding only quantkit's files (stale, damaged or --force)
    with (staged_folder(dest, force=True, replaceable=lambda p: replace_problem(p) is None, discard=discard_replaced)
          as staging, PeakRSS(engine.work_in_subprocesses) as peak):
        uses_cal = engine.needs_calibration(output)
        result = engine.run(EngineJob(recipe, output, model, calibration if uses_cal else None, staging, reporter))
        dropped_files, dropped_keys = admit_files(staging, engine.artifact_patterns(output),
                                                  keep_code_pointers=model.spec.trust_remote_code)
        if dropped_files or dropped_keys:
            reporter.log(f"{output.name}: left out of the artifact (not part of {result.format}): "
                         f"{', '.join(dropped_files + dropped_keys)}")
        total = round(time.perf_counter() - started, 3)
        inputs = inputs or input_fingerprints(recipe, output, model, calibration)
        base_entry, local = _without_local_paths(model, dest.parent)
        calibration_entry = calibration.manifest_entry() if (uses_cal and calibration) else None
        if calibration_entry is not None and Path(calibration_entry["source"]).expanduser().is_absolute():
            local["calibration_source"] = calibration_entry["source"]
            calibration_entry["source"] = _relative(calibration_entry["source"], dest.parent)
        (staging / LOCAL_NAME).write_text(json.dumps(local, indent=2) + "\n")
        manifest = {
            "name": output.name,
            "created": utc_now(),
            "format": result.format,
            "output": output.model_dump(mode="json"),
            "scheme": output.scheme,
            "description": engine.describe(output),
            "recipe": _relative_sources(recipe.model_dump(mode="json"), dest.parent),
            "base_model": base_entry,
            "calibration": calibration_entry,
            "dropped_files": dropped_files,
            "dropped_keys": dropped_keys,
            "libraries": library_versions(),
            "engine": {"name": engine.name, **result.details},
            "failures": result.failures,
            "timings_s": {**result.timings_s, "total_s": total},
            "peak_rss_bytes": peak.read(),
            "peak_rss_method": peak.method,
            "inputs": inputs,
        }
        # every base tensor accounted for, before the manifest: an output that fails it is never written
        checked = time.perf_counter()
        fmt = format_named(result.format)
        coverage = target_coverage(fmt, fmt.targets(Manifest.model_validate(manifest), staging), output, model.path,
                                   model.spec.trust_remote_code)
        refuse_uncovered(coverage, output.name)
        manifest["coverage"] = {name: c.model_dump(mode="json") for name, c in coverage.items()}
        manifest["timings_s"]["coverage_s"] = round(time.perf_counter() - checked, 3)
        manifest["compression_ratio"] = round(model.weight_bytes / max(folder_size(staging), 1), 3)
        manifest = write_manifest(staging, manifest)
    return Artifact(dest, manifest), result.failures
