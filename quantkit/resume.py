"""Resume state: whether an output already made is what its inputs would make now. `quantize` keeps what
is current, the executors' driver skips submitting it, and `quantkit status` reports it, all from here.

An output's inputs are fingerprinted (sha256 of the model, the calibration set, the output's settings,
the libraries, the tools and the CPU thread count); its manifest records them; an artifact whose
record matches is up to date.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quantkit.artifact import Artifact, is_artifact, json_digest, library_versions
from quantkit.artifact_files import replace_problem
from quantkit.engines import engine_for
from quantkit.errors import ArtifactError
from quantkit.jobs import Job, by_cell, plan
from quantkit.output_roots import check_protocol, is_url, read_remote
from quantkit.progress import NullReporter, Reporter
from quantkit.recipe import Recipe
from quantkit.sources.calibration import CalibrationSet, build_calibration
from quantkit.sources.models import ResolvedModel, load_tokenizer, resolve_model


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
    """The input fingerprints each output of `recipe` (a cell's) would be made from now (output name ->
    inputs). Resolves the model and tokenizes the calibration set; loads no model weights."""
    model = resolve_model(recipe.model, reporter or NullReporter())
    calibration = None
    if any(engine_for(o.method).needs_calibration(o) for o in recipe.outputs):
        calibration = build_calibration(recipe.calibration, load_tokenizer(model))
    return {o.name: input_fingerprints(recipe, o, model, calibration) for o in recipe.outputs}


def status(recipe: Recipe, output_dir: str | Path | None = None, reporter: Reporter | None = None) -> list[dict]:
    """Each job of `recipe` (named by its id): up to date, to redo (and why), or not made; and staging
    folders of runs in progress or killed. Resolves each cell's model and tokenizes its calibration set
    (their fingerprints decide), loads no model weights. With a URL root, each manifest is read there (no
    staging folders: the builds happen on the workers)."""
    root = output_dir or recipe.output_dir
    if is_url(root):
        check_protocol(str(root))  # before the calibration set is tokenized: a bad root is refused at once
    rows = []
    for cell, jobs in by_cell(plan(recipe, root)):
        inputs = expected_inputs(cell.recipe, reporter)
        rows += [_remote_row(job, inputs[job.output.name]) if job.remote else _local_row(job, inputs[job.output.name])
                 for job in jobs]
    return rows


def _local_row(job: Job, inputs: dict) -> dict:
    from quantkit.files import PARTIAL_MARK, pid_alive

    dest = Path(job.dest)
    if replace_problem(dest):
        state = OutputState(False, False, "holds files quantkit did not write: left alone; quantize refuses to replace it"
                            if is_artifact(dest) else "not a quantkit artifact: left alone; quantize refuses to replace it")
    else:
        state = output_state(dest, inputs)
    staging = sorted(dest.parent.glob(f".{dest.name}{PARTIAL_MARK}*")) if dest.parent.is_dir() else []
    runs = []
    for p in staging:
        pid = p.name.split(PARTIAL_MARK, 1)[1].split("-")[0]
        runs.append({"path": str(p), "pid": int(pid) if pid.isdigit() else None,
                     "alive": pid.isdigit() and pid_alive(int(pid))})
    label = "up to date" if state.current else "not made" if state.missing else "to redo"
    return {"output": job.id, "path": str(dest), "state": label, "reason": state.reason,
            "running": [r for r in runs if r["alive"]], "stale_partials": [r for r in runs if not r["alive"]]}


def _remote_row(job: Job, inputs: dict) -> dict:
    there = read_remote(job.dest)
    reason = there.problem or stale_reason(there.manifest, inputs)
    label = "up to date" if not reason else "not made" if there.problem == "not made yet" else "to redo"
    return {"output": job.id, "path": job.dest, "state": label, "reason": reason, "running": [], "stale_partials": []}
