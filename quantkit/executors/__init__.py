"""Executors: where the jobs of a recipe run. `local` (this machine: in this process, or N worker
processes) and `ray` (tasks on a Ray cluster). A new executor is one module with a class that has
`name` and `run(specs, board, retries)`, plus a line in EXECUTORS.

Every executor runs the same job (executors.worker.run_job), writes into the same output root and
relies on quantize's input fingerprints for resume: a re-submitted job whose artifact is up to date
is kept, whichever worker made it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from quantkit.errors import QuantkitError
from quantkit.matrix import Job

# what a worker needs of the driver's environment (caches, toolchains, offline switches)
FORWARDED_ENV_PREFIXES = ("QUANTKIT_", "HF_", "TRANSFORMERS_", "LLM_COMPRESSOR_", "TQDM_")


def job_spec(job: Job, validate: bool = False, python: str | None = None) -> dict:
    """A job as plain data for a worker: the cell recipe with local paths made absolute (a worker may
    start elsewhere), the destination, and the environment to forward. The CPU thread count is decided
    here, once, and sent to every worker explicitly (a Ray node's own environment could say otherwise):
    the same count on every worker is what makes an artifact the same wherever it was made."""
    from quantkit.threads import THREADS_ENV, compute_threads

    threads = compute_threads()
    recipe = job.cell.recipe.model_dump(mode="json", exclude={"models", "calibrations"})
    for key in ("model", "calibration"):
        src = recipe[key]["source"]
        local = Path(os.path.expanduser(src))
        if local.exists():
            recipe[key]["source"] = str(local.resolve())
    return {
        "id": job.id, "recipe": json.dumps(recipe), "output": job.output.name,
        "dest": job.dest if job.remote else str(Path(job.dest).resolve()), "remote": job.remote,
        "validate": validate, "cwd": os.getcwd(), "python": python,
        "env": {**{k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)},
                THREADS_ENV: str(threads)},
        "threads": threads,
    }


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

    def finish(self, result: dict) -> None:
        self.update(result["id"], state=result["status"], stage="", seconds=result.get("seconds"),
                    host=result.get("host"), error=result.get("error"))

    def counts(self) -> dict[str, int]:
        with self.lock:
            states = [s.state for s in self.jobs.values()]
        return {k: states.count(k) for k in ("queued", "running", "made", "kept", "failed")}


class Executor(Protocol):
    name: str

    def run(self, specs: list[dict], board: Board, retries: int) -> list[dict]:
        """Run every spec; return one result record per spec (run_job's shape), in any order."""


EXECUTORS = {"local": "quantkit.executors.local:LocalExecutor", "ray": "quantkit.executors.ray_cluster:RayExecutor"}


def executor_for(name: str, **options) -> Executor:
    import importlib

    if name not in EXECUTORS:
        raise QuantkitError(f"--executor {name}: not an executor; choose one of {', '.join(EXECUTORS)}")
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


@dataclass
class MatrixRun:
    results: list[dict]
    seconds: float

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.results if r["status"] == "failed"]

    def summary(self) -> dict:
        return {"seconds": round(self.seconds, 2),
                "counts": {k: sum(r["status"] == k for r in self.results) for k in ("made", "kept", "failed")},
                "jobs": sorted(self.results, key=lambda r: r["id"])}


def run_jobs(jobs: list[Job], executor: Executor, board: Board | None = None, retries: int = 1,
             validate: bool = False, python: str | None = None) -> MatrixRun:
    """Run `jobs` on `executor`; a failed job is retried up to `retries` times (a crash or a killed
    worker; not bad input or a failed gate) and reported without stopping the others. `python` runs
    each job under another interpreter (a worker's own environment); default: this one's."""
    if retries < 0:
        raise QuantkitError(f"--retries {retries}: must be 0 or more")
    board = board or Board.of([j.id for j in jobs])
    from quantkit.engines import engine_for
    from quantkit.matrix import job_estimates

    estimates = job_estimates(jobs)
    specs = []
    for job in jobs:
        est = estimates[job.id]
        specs.append({**job_spec(job, validate, python), "host_bytes": est.host_bytes if est else None,
                      "wants_gpu": est.wants_gpu if est else engine_for(job.output.method).in_process_torch,
                      "gpus": job.cell.recipe.model.gpus})
    started = time.perf_counter()
    finished = up_to_date(jobs, board)
    for job_id in finished:
        board.finish({"id": job_id, "status": "kept", "seconds": 0.0})
    results = [{"id": j.id, "status": "kept", "attempts": 0, "seconds": 0.0, "dest": str(j.dest), "host": None}
               for j in jobs if j.id in finished]
    results += executor.run([s for s in specs if s["id"] not in finished], board, retries)
    return MatrixRun(results, time.perf_counter() - started)


def up_to_date(jobs: list[Job], board: Board) -> set[str]:
    """Jobs whose artifact is already in the output root and current (quantize's input fingerprints:
    same model, calibration, output settings and tools), whichever worker made it: not submitted again.
    Only cells with an artifact there are checked (a check resolves the cell's model here)."""
    from quantkit.artifact import is_artifact
    from quantkit.output_roots import read_remote
    from quantkit.quantize import expected_inputs, output_state, stale_reason

    there = {j.id: read_remote(j.dest) for j in jobs if j.remote}
    cells: dict[str, list[Job]] = {}
    for job in jobs:
        present = not there[job.id].problem if job.remote else is_artifact(job.dest)
        if present:
            cells.setdefault(job.cell.folder, []).append(job)
    current: set[str] = set()
    for group in cells.values():
        try:
            inputs = expected_inputs(group[0].cell.recipe)
        except QuantkitError as e:  # the workers check again when they run the job
            board.log.append(f"{group[0].cell.folder or group[0].id}: could not check for finished jobs here ({e})")
            continue
        for job in group:
            if job.remote:
                fresh = not stale_reason(there[job.id].manifest, inputs[job.output.name])
            else:
                fresh = output_state(Path(job.dest), inputs[job.output.name]).current
            if fresh:
                current.add(job.id)
    return current


def retrying(spec: dict, board: Board, retries: int, attempt_once) -> dict:
    """Run one spec with `attempt_once(spec, on_stage)` until it succeeds or is not worth retrying."""
    result: dict = {}
    for attempt in range(1, retries + 2):
        board.update(spec["id"], state="running", stage="starting", attempts=attempt)
        try:
            result = attempt_once(spec, lambda stage, _id=spec["id"]: board.update(_id, stage=stage))
        except Exception as e:  # noqa: BLE001 - a crashed attempt is a failed job, not a failed matrix
            result = {"id": spec["id"], "status": "failed", "error": f"{type(e).__name__}: {e}", "retryable": True}
        result["attempts"] = attempt
        if result["status"] != "failed" or not result.get("retryable") or attempt > retries:
            break
        board.log.append(f"{spec['id']}: attempt {attempt} failed; retrying")
    board.finish(result)
    return result
