"""The local executor with worker processes: `quantkit quantize --jobs N` (N jobs at once on this machine)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from quantkit.errors import QuantkitError
from quantkit.executors import Board, retrying
from quantkit.executors.worker import run_job
from quantkit.jobs import JobResult, JobSpec


class LocalExecutor:
    name = "local"

    def __init__(self, jobs: int | None = None, **_ignored) -> None:
        jobs = 1 if jobs is None else jobs
        if jobs < 1:
            raise QuantkitError(f"--jobs {jobs}: must be at least 1")
        self.jobs = jobs

    def run(self, specs: list[JobSpec], board: Board, retries: int) -> list[JobResult]:
        # threads only wait on child processes: the work runs in the children
        with ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="quantkit-job") as pool:
            return list(pool.map(lambda spec: retrying(spec, board, retries, run_job), specs))
