"""The Ray executor: each job is a Ray task with the resources it needs, on any node of a cluster.

The task runs the same job as the local executor (executors.worker.run_job: a `quantkit quantize`
child process, tied to the worker), so what Ray adds is placement, resources and retries:
- a worker that dies (killed, out of memory, node lost) is retried by Ray itself (`max_retries`);
- a job that fails with a retryable error is resubmitted by this driver, up to the same count;
- stages reach the driver's board through a small actor that every task reports to.
Artifacts go to the output root the driver names, which every node must see (a shared file system).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace

from quantkit.errors import QuantkitError
from quantkit.executors import Board
from quantkit.jobs import JobResult, JobSpec

RAY_HINT = "install it with `pip install 'quantkit[ray]'` (or `pip install ray`)"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise QuantkitError(f"--executor ray: the ray package is not installed; {RAY_HINT}") from None
    return ray


def _stage_board_class(ray):
    @ray.remote(num_cpus=0)
    class StageBoard:
        """Collects (job, stage) reports from the tasks; the driver drains it."""

        def __init__(self) -> None:
            self.events: list[tuple[str, str]] = []

        def report(self, job_id: str, stage: str) -> None:
            self.events.append((job_id, stage))

        def drain(self) -> list[tuple[str, str]]:
            events, self.events = self.events, []
            return events

    return StageBoard


def _run_on_worker(spec_json: str, stages) -> str:
    """The task: the spec and the result cross the cluster as JSON (quantkit.jobs), not as pickled objects."""
    from quantkit.executors.worker import run_job
    from quantkit.jobs import JobSpec

    spec = JobSpec.from_json(spec_json)
    stages.report.remote(spec.id, "starting")
    return run_job(spec, on_stage=lambda stage: stages.report.remote(spec.id, stage)).to_json()


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, jobs: int | None = None, **_ignored) -> None:
        if jobs is not None and jobs < 1:
            raise QuantkitError(f"--jobs {jobs}: must be at least 1")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.max_running = jobs  # a cap on jobs in flight (None: as many as the cluster's resources allow)

    def _connect(self, ray) -> bool:
        """Connect to the cluster; start a local one when no address is given. True if we started it."""
        if ray.is_initialized():
            return False
        if self.address:
            self._check_reachable()
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            else:  # "local": a new cluster for this run, never one a `ray start` left behind
                ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise QuantkitError(f"--ray-address {self.address}: cannot connect to a Ray cluster there "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        return True

    def _check_reachable(self) -> None:
        """ray.init keeps retrying an address where nothing listens (minutes): try a TCP connection first."""
        import socket

        host, _, port = self.address.removeprefix("ray://").rpartition(":")
        if not host or not port.isdigit():
            return  # "auto" and the like: Ray resolves them
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as e:
            raise QuantkitError(f"--ray-address {self.address}: cannot connect to a Ray cluster there "
                                f"({e.strerror or e}); start one with `ray start --head` or check RAY_ADDRESS") from None

    def run(self, specs: list[JobSpec], board: Board, retries: int) -> list[JobResult]:
        ray = _import_ray()
        # Ray's driver prints worker deaths and node events on stdout, which must stay clean for --json
        sys.stdout.flush()
        saved_stdout = os.dup(1)
        os.dup2(2, 1)
        try:
            started = self._connect(ray)
            try:
                return self._run(ray, specs, board, retries)
            finally:
                if started:
                    ray.shutdown()
        finally:
            sys.stdout.flush()
            os.dup2(saved_stdout, 1)
            os.close(saved_stdout)

    def _run(self, ray, specs: list[JobSpec], board: Board, retries: int) -> list[JobResult]:
        stages = _stage_board_class(ray).remote()
        task = ray.remote(_run_on_worker)
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        node_memory = max((r.get("memory", 0) for r in alive), default=0)
        node_cpus = max((r.get("CPU", 0) for r in alive), default=0)
        starts: dict[str, int] = {}
        resubmits: dict[str, int] = {}
        pending: dict = {}
        results: list[JobResult] = []

        def submit(spec: JobSpec) -> None:
            # the task holds the CPUs its job computes on (QUANTKIT_THREADS, pinned in the job)
            options = {"num_cpus": spec.threads, "num_gpus": spec.gpus if (has_gpu and spec.wants_gpu) else 0,
                       "max_retries": retries, "retry_exceptions": False,
                       "runtime_env": {"env_vars": dict(spec.env)}}
            if spec.host_bytes:
                options["memory"] = spec.host_bytes
            pending[task.options(**options).remote(spec.to_json(), stages)] = spec

        def refused(spec: JobSpec, error: str) -> None:
            result = JobResult(spec.id, spec.output, "failed", spec.dest, error=error)
            board.finish(result)
            results.append(result)

        waiting = []
        for spec in specs:
            need = spec.host_bytes or 0
            if node_memory and need > node_memory:
                refused(spec, f"needs about {need / 1e9:.1f} GB of host memory (the plan's estimate); the largest "
                              f"node of the cluster has {node_memory / 1e9:.1f} GB for tasks")
                continue
            if node_cpus and spec.threads > node_cpus:  # Ray would keep it pending forever
                refused(spec, f"computes on {spec.threads} CPU threads (QUANTKIT_THREADS) and the largest node of "
                              f"the cluster has {node_cpus:g} CPUs; set QUANTKIT_THREADS to {int(node_cpus)} or less")
                continue
            waiting.append(spec)
        while pending or waiting:
            while waiting and (self.max_running is None or len(pending) < self.max_running):
                submit(waiting.pop(0))
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for job_id, stage in ray.get(stages.drain.remote()):
                if stage == "starting":
                    starts[job_id] = starts.get(job_id, 0) + 1
                    board.update(job_id, state="running", stage="starting", attempts=starts[job_id])
                    if starts[job_id] > 1:
                        board.log.append(f"{job_id}: attempt {starts[job_id]} started (the previous one was lost)")
                else:
                    board.update(job_id, stage=stage)
            for ref in done:
                spec = pending.pop(ref)
                try:
                    result = JobResult.from_json(ray.get(ref))
                except ray.exceptions.RayError as e:  # retries exhausted: the worker kept dying
                    text = str(e).strip().splitlines()
                    result = JobResult(spec.id, spec.output, "failed", spec.dest,
                                       error=f"{type(e).__name__}: {text[0] if text else ''}")
                result = replace(result, attempts=starts.get(spec.id, 1))
                if result.status == "failed" and result.retryable and resubmits.get(spec.id, 0) < retries:
                    resubmits[spec.id] = resubmits.get(spec.id, 0) + 1
                    board.log.append(f"{spec.id}: attempt {result.attempts} failed; retrying")
                    submit(spec)
                    continue
                board.finish(result)
                board.update(spec.id, attempts=result.attempts)
                results.append(result)
            if not done:
                time.sleep(0.05)
        return results
