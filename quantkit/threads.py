"""The CPU threads torch computes on: one count for every job, whichever executor runs it.

A calibrated method's bytes depend on torch's intra-op thread count: MKL's Cholesky (GPTQ's Hessian
inverse) and torch's reductions split their work by thread, and each split rounds differently (2 of 49
tensors of a tiny hidden-256 GPTQ output changed between 1 and 2 threads). The machine's count (all cores here,
one on a Ray task, whatever OMP_NUM_THREADS says) would make the artifact depend on where a job lands.
So the count is `QUANTKIT_THREADS`, default 1: read once by the driver, forwarded to every worker
(executors.job_spec), pinned where the engine computes and recorded in each output's input fingerprint
(a different count is "inputs changed: threads"). docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from quantkit.errors import QuantkitError

THREADS_ENV = "QUANTKIT_THREADS"
DEFAULT_THREADS = 1  # not the machine's core count: the same on a laptop, a worker process and a Ray task
MAX_THREADS = 1024


def compute_threads() -> int:
    """The thread count this environment asks for (QUANTKIT_THREADS), or the default."""
    raw = os.environ.get(THREADS_ENV)
    if raw is None:
        return DEFAULT_THREADS
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_THREADS:
        raise QuantkitError(f"{THREADS_ENV}={raw!r}: must be a whole number from 1 to {MAX_THREADS} "
                            f"(the CPU threads torch computes on; unset: {DEFAULT_THREADS})")
    return int(raw)


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[int]:
    """torch computes on `threads` intra-op threads inside the block (the count that decides the bytes),
    and on the caller's count again after it. The inter-op pool is sized too when torch still allows it:
    it runs whole ops side by side (each on the intra-op threads), which changes no result."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        # settable once per process, before any inter-op work: a second output keeps the first's pool
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
