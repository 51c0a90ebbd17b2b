"""One job, run where an executor puts it: `quantkit quantize` (and `validate`) of one output of one
cell, in a child process of the worker.

A child process, not a call: each job gets a fresh interpreter (torch and the calibration state of
one job never leak into the next), a job can run under another Python (a worker's own environment),
and a job that dies takes nothing else with it. The child is tied to its worker (PR_SET_PDEATHSIG):
when a worker is killed its job dies with it, leaving only a staging folder that the retry removes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from quantkit.artifact import MANIFEST_NAME
from quantkit.jobs import ArtifactSummary, JobResult, JobSpec

EXIT_BAD_INPUT = 2  # quantkit's exit code for input that no retry can fix


def _parent_death_signal():
    """The child's preexec_fn, prepared here in the parent: between fork and exec the child of a
    threaded process (the local executor's) may only make the foreign call, not load a library."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the child outlives a killed worker, the lock still holds
        return None
    return lambda: prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stream(cmd: list[str], env: dict, cwd: str, on_stage: Callable[[str], None]) -> tuple[int, list[str]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                            preexec_fn=_parent_death_signal(), errors="replace")
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip("\n")])[-40:]
        text = line.strip()
        # plain progress lines: "HH:MM:SS start <step>" (a top-level step has no indent)
        if len(text) > 9 and text[8:15] == " start " and not line[9:10].isspace():
            on_stage(text[15:][:80])
    return proc.wait(), tail


def child_commands(spec: JobSpec, dest: Path, recipe: Path) -> list[list[str]]:
    """The child processes of one job: `quantkit quantize` of its one output, with the run's options, and
    `quantkit validate` of the artifact when the run validates."""
    python = spec.python or sys.executable
    quantize = [python, "-m", "quantkit.cli.main", "quantize", str(recipe), "-o", str(dest.parent), "--only", spec.output,
                "--progress", "plain", *spec.options.child_args()]
    validate = [python, "-m", "quantkit.cli.main", "validate", str(dest), "--progress", "plain"]
    return [quantize, validate] if spec.options.validate else [quantize]


def run_job(spec: JobSpec, on_stage: Callable[[str], None] = lambda s: None) -> JobResult:
    """Run one job described by `spec` (made by executors.job_spec); returns its result. A job whose
    destination is a URL builds in a folder of this machine, then publishes the artifact there."""
    from quantkit.output_roots import build_folder

    dest = build_folder(spec.dest) / spec.output if spec.remote else Path(spec.dest)
    manifest = dest / MANIFEST_NAME
    before = manifest.stat().st_mtime_ns if manifest.is_file() else None
    started = time.time()
    env = {**os.environ, **spec.env, "QUANTKIT_PROGRESS": "plain", "PYTHONUNBUFFERED": "1"}
    code, tail, failed_at = 0, [], None
    with tempfile.TemporaryDirectory(prefix="quantkit-job-") as tmp:
        recipe = Path(tmp) / "recipe.json"  # JSON is YAML: the cell recipe exactly as the driver expanded it
        recipe.write_text(spec.recipe)
        for stage, cmd in zip(("quantize", "validate"), child_commands(spec, dest, recipe)):
            on_stage(stage)
            code, tail = _stream(cmd, env, spec.cwd, on_stage)
            if code:
                failed_at = stage
                break
    after = manifest.stat().st_mtime_ns if manifest.is_file() else None
    status = "failed" if code != 0 else "kept" if before is not None and before == after else "made"
    artifact = _summary(dest) if after is not None else None  # read before a URL job's build folder goes
    if spec.remote and failed_at != "quantize":
        on_stage("publish")
        code, tail, failed_at = _publish(dest, spec.dest, code, tail, failed_at)
        status = "failed" if code != 0 else "made"
    return JobResult(
        id=spec.id, name=spec.output, status=status, dest=spec.dest if spec.remote else str(dest),
        exit_code=code, seconds=round(time.time() - started, 2), started_at=round(started, 3),
        ended_at=round(time.time(), 3), host=socket.gethostname(), pid=os.getpid(),
        error="\n".join(line for line in tail if line.strip())[-2000:] if code != 0 else None, failed_at=failed_at,
        # a gate that failed fails again; bad input stays bad; a crash or a killed process may not recur
        retryable=failed_at in ("quantize", "publish") and code != EXIT_BAD_INPUT, artifact=artifact)


def _summary(dest: Path) -> ArtifactSummary | None:
    from pydantic import ValidationError

    from quantkit.artifact import Manifest

    try:
        return ArtifactSummary.of(Manifest.model_validate_json((dest / MANIFEST_NAME).read_text()))
    except (OSError, ValidationError, ValueError):
        return None


def _publish(local: Path, url: str, code: int, tail: list[str], failed_at: str | None) -> tuple[int, list[str], str | None]:
    """Publish the artifact built in `local` (even when its validation failed: the report travels with
    it, as it stays beside an artifact in a folder), then drop the build folder."""
    from quantkit.errors import QuantkitError
    from quantkit.output_roots import publish

    try:
        publish(local, url)
    except QuantkitError as e:  # the destination holds something that is not ours: no retry changes that
        return EXIT_BAD_INPUT, [str(e)], "publish"
    except OSError as e:  # the store or the network: worth another attempt
        return 1, [f"publishing to {url} failed: {type(e).__name__}: {e}"], "publish"
    shutil.rmtree(local.parent, ignore_errors=True)  # this job's own build folder under quantkit's cache
    return code, tail, failed_at
