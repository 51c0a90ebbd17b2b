"""Peak resident memory of one step inside a long-lived process.

A thread samples the process RSS every 10 ms while the step runs. It is the process's
memory, so whatever earlier steps still hold is included. (Resetting the kernel's VmHWM via
/proc/self/clear_refs was tried first; on this machine it reported peaks above the process's
own ru_maxrss, so it is not used.)
"""

from __future__ import annotations

import functools
import threading


class PeakRSS:
    interval_s = 0.01

    def __init__(self) -> None:
        self.bytes: int | None = None
        self.method = "sampled"
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
        self.bytes = self._peak
        return self.bytes

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.read()



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
