"""Peak resident memory of one step inside a long-lived process.

A thread samples the process RSS every 10 ms while the step runs. It is the process's
memory, so whatever earlier steps still hold is included. (Resetting the kernel's VmHWM via
/proc/self/clear_refs was tried first; on this machine it reported peaks above the process's
own ru_maxrss, so it is not used.)

A step whose work runs in child processes (llama.cpp's tools) is measured with `tools=True`:
this process sampled every 0.5 s, and the largest child's own peak (`ru_maxrss` of the waited-for
children, which the kernel keeps for free). Sampling every 10 ms beside a tool that keeps every
core busy made llama-imatrix about 9% slower (benchmarks/README.md).
"""

from __future__ import annotations

import functools
import sys
import threading


class PeakRSS:
    def __init__(self, tools: bool = False) -> None:
        self.bytes: int | None = None
        self.tools = tools
        self.interval_s = 0.5 if tools else 0.01
        self.method = "sampled, and the largest child process's ru_maxrss" if tools else "sampled"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0

    def __enter__(self) -> "PeakRSS":
        import psutil

        proc = psutil.Process()
        self._peak = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self._peak = max(self._peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True, name="quantkit-peak-rss")
        self._thread.start()
        return self

    def read(self) -> int:
        """Peak so far in this step."""
        self.bytes = max(self._peak, largest_child_rss()) if self.tools else self._peak
        return self.bytes

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.read()



def largest_child_rss() -> int:
    """The peak RSS of the largest child process waited for so far (grandchildren included when their
    parents waited for them), in bytes; 0 where the platform keeps none."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, looked up once (find_library runs ldconfig); None where libc is not glibc."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # macOS, musl: nothing to trim
        return None


def release_free_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc `malloc_trim`; a no-op elsewhere).

    glibc keeps freed memory in its per-thread arenas; scoring allocates and frees windows of
    logits, and without trimming the process grew to 3.1 GB resident validating 4,096 tokens of
    SmolLM2. Trimmed after each window it stays near one model at the same speed; a fixed 1 MiB
    mmap threshold also held memory down but halved scoring speed (docs/decisions.md)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
