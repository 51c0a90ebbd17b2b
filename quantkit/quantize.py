"""`quantkit.quantize`: recipe -> artifacts.

Order matters for the user's time: everything that can be checked cheaply (recipe,
destinations, model source, scheme vs. layer shapes) is checked before the first
calibration pass, so a typo or an impossible group size fails in seconds, not minutes.
"""

from __future__ import annotations

import gc
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from quantkit.artifact import (
    LOCAL_NAME,
    Artifact,
    admit_files,
    is_artifact,
    json_digest,
    library_versions,
    remove_own_files,
    replace_problem,
    utc_now,
    write_manifest,
)
from quantkit.device import accelerator_available
from quantkit.engines import EngineJob, engine_for
from quantkit.errors import ArtifactError, QuantkitError, RecipeError
from quantkit.files import exclusive_outputs, folder_size, remove_stale_partials, staged_folder
from quantkit.memory import PeakRSS
from quantkit.output_roots import check_protocol, is_url, join, read_remote, root_problems, under
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
    file that is not there, an output folder that is a file or cannot be written. A matrix: every cell's."""
    if recipe.is_matrix:
        root = output_dir or recipe.output_dir
        found = []
        for cell in recipe.cells():
            for problem in preflight_problems(cell.recipe, under(root, cell.folder)):
                # name the matrix entry, not the cell's expanded field
                if cell.model_index is not None:
                    problem = problem.replace("model.source:", f"models[{cell.model_index}].source:", 1)
                if cell.calibration_index is not None:
                    problem = problem.replace("calibration.source:", f"calibrations[{cell.calibration_index}].source:", 1)
                found.append(problem)
        return list(dict.fromkeys(found))
    problems = []
    src = recipe.model.source
    looks_local = src.startswith((".", "/", "~")) or src.endswith(".gguf") or src.count("/") > 1
    if looks_local and not Path(src).expanduser().exists():
        problems.append(f"model.source: {Path(src).expanduser()} does not exist")
    cal = recipe.calibration.source
    if not cal.startswith(("builtin:", "hf:")) and not Path(cal).expanduser().is_file():
        problems.append(f"calibration.source: calibration file not found: {Path(cal).expanduser()}")
    if is_url(output_dir or recipe.output_dir):
        return problems + root_problems(output_dir or recipe.output_dir, "local")
    root = Path(output_dir or recipe.output_dir)
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
    """Refuse a run whose artifacts cannot fit, before any calibration work."""
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
    force_space: bool = False,
    force_memory: bool = False,
) -> list[Artifact]:
    """Produce every (or the `only`) outputs of `recipe`; returns the artifacts (written, or kept because
    their recorded input fingerprints match: `force` redoes those too).

    Raises QuantkitError before any heavy work for bad input, and QuantizeFailed after the
    run if some outputs failed (the others are complete and on disk).
    """
    if is_url(output_dir or recipe.output_dir):
        raise QuantkitError(f"output_dir {output_dir or recipe.output_dir}: quantize() writes to a folder; a URL root is "
                            "published to by the executors (`quantkit quantize RECIPE -o URL`, or quantkit.executors.run_jobs)")
    reporter = reporter or NullReporter()
    if recipe.is_matrix:
        return _quantize_cells(recipe, output_dir, only, force, reporter, keep_going, force_space, force_memory)
    problems = preflight_problems(recipe, output_dir)
    if problems:
        raise RecipeError(recipe.name, problems)
    jobs = plan(recipe, output_dir, only)
    for _, dest in jobs:  # what is there must be ours (an artifact holding only quantkit's files), else refused
        problem = replace_problem(dest)
        if problem:
            raise ArtifactError(problem)
    with exclusive_outputs([dest for _, dest in jobs]):  # a second run on the same outputs is refused now, not later
        return _run(recipe, jobs, output_dir, force, force_space, keep_going, reporter, force_memory)


def _quantize_cells(recipe: Recipe, output_dir, only, force, reporter, keep_going, force_space,
                    force_memory) -> list[Artifact]:
    """A matrix recipe in this process: cell after cell (a cell's outputs share its resolved model and
    tokenized calibration set), every cell checked before the first starts."""
    from quantkit.matrix import jobs as matrix_jobs

    root = Path(output_dir or recipe.output_dir)
    selected = matrix_jobs(recipe, root, only)
    cells: dict[str, tuple] = {}
    for job in selected:
        cells.setdefault(job.cell.folder, (job.cell, []))[1].append(job.output.name)
    problems = preflight_problems(recipe, root)
    if problems:
        raise RecipeError(recipe.name, problems)
    artifacts: list[Artifact] = []
    failures: list[OutputFailure] = []
    for n, (cell, names) in enumerate(cells.values(), 1):
        reporter.log(f"cell {n}/{len(cells)}: {cell.folder or '.'} ({cell.recipe.model.source}, {len(names)} output(s))")
        try:
            artifacts += quantize(cell.recipe, output_dir=root / cell.folder, only=names, force=force, reporter=reporter,
                                  keep_going=keep_going, force_space=force_space, force_memory=force_memory)
        except QuantizeFailed as e:
            artifacts += e.artifacts
            failures += [OutputFailure(f"{cell.folder}/{f.name}".lstrip("/"), f.error) for f in e.failures]
        except QuantkitError as e:
            if not keep_going:
                raise
            failures += [OutputFailure(f"{cell.folder}/{name}".lstrip("/"), str(e)) for name in names]
            reporter.log(f"{cell.folder or '.'} failed: {e}", style="red")
    if failures:
        raise QuantizeFailed(artifacts, failures)
    return artifacts


def _run(recipe: Recipe, jobs: list, output_dir, force: bool, force_space: bool, keep_going: bool,
         reporter: Reporter, force_memory: bool = False) -> list[Artifact]:
    if any(engine_for(o.method).in_process_torch for o, _ in jobs) and not accelerator_available():
        reporter.log("no accelerator found: quantizing on CPU")
    model = resolve_model(recipe.model, reporter)
    for output, _ in jobs:
        engine_for(output.method).preflight(output, model)
    if not force_space:
        check_free_space(jobs, model, recipe.model.dtype, Path(output_dir or recipe.output_dir))
    if not force_memory:
        check_memory(recipe, [o for o, dest in jobs if force or not is_artifact(dest)], model)
    engines = {engine_for(o.method) for o, _ in jobs}
    try:
        for output, dest in jobs:
            if force or not dest.exists():  # an existing output may be kept: nothing to start for it yet
                engine_for(output.method).start(output, model)
        return _make(recipe, jobs, model, force, keep_going, reporter)
    finally:
        for engine in engines:
            engine.abandon()


def _make(recipe: Recipe, jobs: list, model: ResolvedModel, force: bool, keep_going: bool,
          reporter: Reporter) -> list[Artifact]:
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
    made = 0
    for i, (output, dest) in enumerate(jobs, 1):
        # an output not made yet needs its input fingerprints only for its manifest: the base's hash then
        # keeps running in the background while this output calibrates (sources.models.fingerprint_later)
        inputs = input_fingerprints(recipe, output, model, calibration) if dest.exists() else None
        state = output_state(dest, inputs) if inputs else OutputState(True, False, "not made yet")
        if state.current and not force:
            remove_stale_partials(dest)
            reporter.log(f"[{i}/{len(jobs)}] {output.name}: up to date (inputs unchanged), kept")
            artifacts.append(state.artifact)
            continue
        why = "" if state.missing else f"; {'--force' if state.current else state.reason}: redoing it"
        reporter.log(f"[{i}/{len(jobs)}] {output.name} ({output.method} {output.scheme}){why}")
        if made:
            gc.collect()  # the previous output's model, held in reference cycles (0.26 s: not paid by a single output)
        made += 1
        try:
            artifact, partial_failures = _produce(recipe, output, dest, model, calibration, inputs, reporter)
            artifacts.append(artifact)
            if partial_failures:
                failures.append(OutputFailure(output.name, "; ".join(partial_failures)))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - one failed output must not lose the others
            if not keep_going:
                raise
            failures.append(OutputFailure(output.name, f"{type(e).__name__}: {e}"))
            reporter.log(f"{output.name} failed: {type(e).__name__}: {e}", style="red")
    if failures:
        raise QuantizeFailed(artifacts, failures)
    return artifacts


def input_fingerprints(recipe: Recipe, output, model: ResolvedModel, calibration: CalibrationSet | None) -> dict:
    """sha256 of everything that decides an output, one entry per input and `all` over them."""

    digest = json_digest  # Manifest.manifest_problems recomputes the output's digest the same way
    engine = engine_for(output.method)
    uses_cal = engine.needs_calibration(output)
    parts = {
        "model": digest({"fingerprint": model.fingerprint, "dtype": recipe.model.dtype}),
        "calibration": calibration.fingerprint if (uses_cal and calibration) else None,
        "output": digest(output.model_dump(mode="json")),
        "libraries": digest({k: v for k, v in library_versions().items() if k != "quantkit"}),
        "tools": digest({"quantkit": library_versions(("quantkit",)).get("quantkit"), **engine.tool_versions()}),
        # the CPU threads the bytes depend on (QUANTKIT_THREADS, quantkit.threads): another count redoes the output
        "threads": None if (threads := engine.compute_threads(output)) is None else digest({"torch_threads": threads}),
    }
    return {**parts, "all": digest(parts)}


@dataclass
class OutputState:
    """Where an output stands against the inputs it would be made from now."""

    missing: bool
    current: bool
    reason: str  # why it is not current
    artifact: Artifact | None = None


def output_state(dest: Path, inputs: dict) -> OutputState:
    if not dest.exists():
        return OutputState(True, False, "not made yet")
    try:
        art = Artifact.load(dest)
    except ArtifactError as e:
        return OutputState(False, False, f"damaged ({str(e).splitlines()[-1].strip()})")
    reason = stale_reason(art.manifest, inputs)
    return OutputState(False, not reason, reason, art)


def stale_reason(manifest, inputs: dict) -> str:
    """Why an artifact with `manifest` is not what `inputs` would make now ("" when it is)."""
    if manifest.failures:
        return f"incomplete (failed: {', '.join(manifest.failures)})"
    if not manifest.inputs:
        return "made by an older quantkit (no input fingerprints)"
    changed = [k for k in inputs if k != "all" and manifest.inputs.get(k) != inputs[k]]
    return f"inputs changed: {', '.join(changed)}" if changed else ""


def expected_inputs(recipe: Recipe, reporter: Reporter | None = None) -> dict[str, dict]:
    """The input fingerprints each output of `recipe` would be made from now (output name -> inputs).
    Resolves the model and tokenizes the calibration set; loads no model weights."""
    model = resolve_model(recipe.model, reporter or NullReporter())
    calibration = None
    if any(engine_for(o.method).needs_calibration(o) for o in recipe.outputs):
        calibration = build_calibration(recipe.calibration, load_tokenizer(model))
    return {o.name: input_fingerprints(recipe, o, model, calibration) for o in recipe.outputs}


def status(recipe: Recipe, output_dir: str | Path | None = None, reporter: Reporter | None = None) -> list[dict]:
    """Each output of `recipe`: up to date, to redo (and why), or not made; and staging folders of runs
    in progress or killed. Resolves the model and tokenizes the calibration set (their fingerprints
    decide), loads no model weights."""
    from quantkit.files import PARTIAL_MARK, pid_alive

    root = output_dir or recipe.output_dir
    if recipe.is_matrix:  # each cell's outputs, named by job id
        return [{**row, "output": f"{cell.folder}/{row['output']}" if cell.folder else row["output"]} for cell in recipe.cells()
                for row in status(cell.recipe, under(root, cell.folder), reporter)]
    if is_url(root):
        check_protocol(str(root))  # before the calibration set is tokenized: a bad root is refused at once
        return remote_status(recipe, root, reporter)
    jobs = plan(recipe, output_dir)
    inputs = expected_inputs(recipe, reporter)
    rows = []
    for output, dest in jobs:
        if replace_problem(dest):
            state = OutputState(False, False, "holds files quantkit did not write: left alone; quantize refuses to replace it"
                                if is_artifact(dest) else "not a quantkit artifact: left alone; quantize refuses to replace it")
        else:
            state = output_state(dest, inputs[output.name])
        staging = sorted(dest.parent.glob(f".{dest.name}{PARTIAL_MARK}*")) if dest.parent.is_dir() else []
        runs = []
        for p in staging:
            pid = p.name.split(PARTIAL_MARK, 1)[1].split("-")[0]
            runs.append({"path": str(p), "pid": int(pid) if pid.isdigit() else None,
                         "alive": pid.isdigit() and pid_alive(int(pid))})
        label = "up to date" if state.current else "not made" if state.missing else "to redo"
        rows.append({"output": output.name, "path": str(dest), "state": label, "reason": state.reason,
                     "running": [r for r in runs if r["alive"]], "stale_partials": [r for r in runs if not r["alive"]]})
    return rows


def remote_status(recipe: Recipe, root: str, reporter: Reporter | None = None) -> list[dict]:
    """status() for an output root given as a URL: read each output's manifest there (no staging
    folders: the builds happen on the workers)."""
    inputs = expected_inputs(recipe, reporter)
    rows = []
    for output in recipe.outputs:
        url = join(root, output.name)
        there = read_remote(url)
        reason = there.problem or stale_reason(there.manifest, inputs[output.name])
        label = "up to date" if not reason else "not made" if there.problem == "not made yet" else "to redo"
        rows.append({"output": output.name, "path": url, "state": label, "reason": reason, "running": [],
                     "stale_partials": []})
    return rows


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
        manifest["compression_ratio"] = round(model.weight_bytes / max(folder_size(staging), 1), 3)
        manifest = write_manifest(staging, manifest)
    return Artifact(dest, manifest), result.failures
