"""Executors: where the jobs of a recipe run. `local` (this machine: in this process, or N worker
processes) and `ray` (tasks on a Ray cluster). A new executor is one module with a class that has
`name` and `run(specs, board, retries)`, plus a line in EXECUTORS.

Every executor runs the same job (executors.worker.run_job) with the run's options (quantkit.jobs.RunOptions),
writes into the same output root and relies on the input fingerprints of quantkit.resume: a re-submitted
job whose artifact is up to date is kept, whichever worker made it (unless the run is forced).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from quantkit.errors import QuantkitError
from quantkit.jobs import DEFAULT_OPTIONS, ArtifactSummary, Job, JobResult, JobSpec, QuantizeRun, RunOptions
from quantkit.matrix import Estimate

if TYPE_CHECKING:
    from quantkit.artifact import Manifest

# what a worker needs of the driver's environment (caches, toolchains, offline switches)
FORWARDED_ENV_PREFIXES = ("QUANTKIT_", "HF_", "TRANSFORMERS_", "LLM_COMPRESSOR_", "TQDM_")


def job_spec(job: Job, options: RunOptions = DEFAULT_OPTIONS, python: str | None = None,
             estimate: Estimate | None = None) -> JobSpec:
    """A job as plain data for a worker: the cell recipe with local paths made absolute (a worker may
    start elsewhere), the destination, the run's options, the environment to forward and the plan's
    resources. The CPU thread count is decided here, once, and sent to every worker explicitly (a Ray
    node's own environment could say otherwise): the same count on every worker is what makes an
    artifact the same wherever it was made."""
    from quantkit.engines import engine_for
    from quantkit.threads import THREADS_ENV, compute_threads

    threads = compute_threads()
    recipe = job.cell.recipe.model_dump(mode="json", exclude={"models", "calibrations"})
    for key in ("model", "calibration"):
        src = recipe[key]["source"]
        local = Path(os.path.expanduser(src))
        if local.exists():
            recipe[key]["source"] = str(local.resolve())
    return JobSpec(
        id=job.id, recipe=json.dumps(recipe), output=job.output.name,
        dest=job.dest if job.remote else str(Path(job.dest).resolve()), remote=job.remote, cwd=os.getcwd(),
        threads=threads, options=options, python=python,
        env={**{k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}, THREADS_ENV: str(threads)},
        host_bytes=estimate.host_bytes if estimate else None,
        wants_gpu=estimate.wants_gpu if estimate else engine_for(job.output.method).in_process_torch,
        gpus=job.cell.recipe.model.gpus,
    )


@dataclass
class JobState:
    id: str
    state: str = "queued"  # queued, running, made, kept, failed
    stage: str = ""
    attempts: int = 0
    seconds: float | None = None
    host: str | None = None
    error: str | None = None


@dataclass
class Board:
    """The state of every job, fed by the executor (from its threads or its workers' messages)."""

    jobs: dict[str, JobState] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Event = field(default_factory=threading.Event)
    log: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, ids: list[str]) -> "Board":
        return cls(jobs={i: JobState(i) for i in ids})

    def update(self, job_id: str, **values) -> None:
        with self.lock:
            state = self.jobs[job_id]
            for k, v in values.items():
                setattr(state, k, v)
        self.changed.set()

    def finish(self, result: JobResult) -> None:
        self.update(result.id, state=result.status, stage="", seconds=result.seconds, host=result.host, error=result.error)

    def counts(self) -> dict[str, int]:
        with self.lock:
            states = [s.state for s in self.jobs.values()]
        return {k: states.count(k) for k in ("queued", "running", "made", "kept", "failed")}


class Executor(Protocol):
    name: str

    def run(self, specs: list[JobSpec], board: Board, retries: int) -> list[JobResult]:
        """Run every spec (each with the run's options, which its child applies); return one result per
        spec, in any order."""


EXECUTORS = {"local": "quantkit.executors.local:LocalExecutor", "ray": "quantkit.executors.ray_cluster:RayExecutor"}


def executor_for(name: str, **options) -> Executor:
    import importlib

    if name not in EXECUTORS:
        raise QuantkitError(f"--executor {name}: not an executor; choose one of {', '.join(EXECUTORS)}")
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


def run_jobs(jobs: list[Job], executor: Executor, board: Board | None = None, options: RunOptions = DEFAULT_OPTIONS,
             python: str | None = None) -> QuantizeRun:
    """Run `jobs` on `executor`; a failed job is retried up to `options.retries` times (a crash or a killed
    worker; not bad input or a failed gate) and reported without stopping the others. The options reach
    every job's child (`--force` redoes an up-to-date artifact there, and it is not kept here). `python`
    runs each job under another interpreter (a worker's own environment); default: this one's."""
    if options.retries < 0:
        raise QuantkitError(f"--retries {options.retries}: must be 0 or more")
    board = board or Board.of([j.id for j in jobs])
    from quantkit.matrix import job_estimates

    estimates = job_estimates(jobs)
    specs = [job_spec(job, options, python, estimates[job.id]) for job in jobs]
    started = time.perf_counter()
    finished = {} if options.force else up_to_date(jobs, board)
    results = []
    for job in jobs:
        if job.id in finished:
            result = JobResult(job.id, job.output.name, "kept", str(job.dest), seconds=0.0,
                               artifact=ArtifactSummary.of(finished[job.id]))
            board.finish(result)
            results.append(result)
    results += executor.run([s for s in specs if s.id not in finished], board, options.retries)
    order = {j.id: i for i, j in enumerate(jobs)}
    return QuantizeRun(sorted(results, key=lambda r: order[r.id]), time.perf_counter() - started)


def up_to_date(jobs: list[Job], board: Board) -> dict[str, "Manifest"]:
    """Jobs whose artifact is already in the output root and current (quantize's input fingerprints:
    same model, calibration, output settings and tools), whichever worker made it, with their manifests:
    not submitted again. Only cells with an artifact there are checked (a check resolves the cell's model here)."""
    from quantkit.artifact import is_artifact
    from quantkit.jobs import by_cell
    from quantkit.output_roots import read_remote
    from quantkit.resume import expected_inputs, output_state, stale_reason

    there = {j.id: read_remote(j.dest) for j in jobs if j.remote}
    present = [j for j in jobs if (not there[j.id].problem if j.remote else is_artifact(Path(j.dest)))]
    current: dict[str, Manifest] = {}
    for cell, group in by_cell(present):
        try:
            inputs = expected_inputs(cell.recipe)
        except QuantkitError as e:  # the workers check again when they run the job
            board.log.append(f"{cell.folder or group[0].id}: could not check for finished jobs here ({e})")
            continue
        for job in group:
            if job.remote:
                if not stale_reason(there[job.id].manifest, inputs[job.output.name]):
                    current[job.id] = there[job.id].manifest
            else:
                state = output_state(Path(job.dest), inputs[job.output.name])
                if state.current:
                    current[job.id] = state.artifact.manifest
    return current


def retrying(spec: JobSpec, board: Board, retries: int, attempt_once) -> JobResult:
    """Run one spec with `attempt_once(spec, on_stage)` until it succeeds or is not worth retrying."""
    result = None
    for attempt in range(1, retries + 2):
        board.update(spec.id, state="running", stage="starting", attempts=attempt)
        try:
            result = attempt_once(spec, lambda stage, _id=spec.id: board.update(_id, stage=stage))
        except Exception as e:  # noqa: BLE001 - a crashed attempt is a failed job, not a failed matrix
            result = JobResult(spec.id, spec.output, "failed", spec.dest, error=f"{type(e).__name__}: {e}", retryable=True)
        result = replace(result, attempts=attempt)
        if result.status != "failed" or not result.retryable or attempt > retries:
            break
        board.log.append(f"{spec.id}: attempt {attempt} failed; retrying")
    board.finish(result)
    return result
