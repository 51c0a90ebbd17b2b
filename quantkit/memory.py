"""Peak resident memory of one step inside a long-lived process.

The kernel keeps the process's high-water mark (`ru_maxrss`) for free. When a step raises it, the
step's peak is exactly that mark. When it does not (an earlier step of the same process peaked
higher), a thread's samples of the RSS, every 0.1 s, give the step's own peak. It is the process's
memory, so whatever earlier steps still hold is included. (Resetting the kernel's VmHWM via
/proc/self/clear_refs was tried first; on this machine it reported peaks above the process's own
ru_maxrss, so it is not used.) Sampling every 10 ms, as quantkit did before, made llama-imatrix
9% slower on 2 cores (docs/decisions.md, "Benchmark history").

Linux carries a parent's peak into a child's `ru_maxrss` (across fork and exec): a quantkit started by
a large process starts with that process's mark, and its steps fall back to their samples until one
exceeds it. Either way the figure is the step's own.

A step whose work runs in child processes (llama.cpp's tools) also counts the largest child's own
peak (`ru_maxrss` of the waited-for children), and samples this process every 0.5 s.
"""

from __future__ import annotations

import functools
import sys
import threading


class PeakRSS:
    def __init__(self, tools: bool = False) -> None:
        self.bytes: int | None = None
        self.method: str | None = None  # which measure gave `bytes`
        self.tools = False
        self.interval_s = 0.1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0
        self._mark_before = 0
        if tools:
            self.watch_tools()

    def watch_tools(self) -> None:
        """From now on the work runs in child processes: count the largest child's own peak and sample
        this process every 0.5 s."""
        self.tools = True
        self.interval_s = 0.5

    def __enter__(self) -> "PeakRSS":
        import psutil

        proc = psutil.Process()
        self._mark_before = high_water_mark()
        self._peak = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(self.interval_s):
                self._peak = max(self._peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True, name="quantkit-peak-rss")
        self._thread.start()
        return self

    def read(self) -> int:
        """Peak so far in this step."""
        mark = high_water_mark()
        if mark > self._mark_before:
            own, self.method = mark, "ru_maxrss"
        else:
            own, self.method = self._peak, f"sampled every {self.interval_s:g} s"
        if self.tools:
            child = largest_child_rss()
            if child > own:
                own, self.method = child, "ru_maxrss of the largest child process"
        self.bytes = own
        return own

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.read()


def _maxrss(who: str) -> int:
    try:
        import resource
    except ImportError:  # Windows: the samples alone
        return 0
    maxrss = resource.getrusage(getattr(resource, who)).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB on Linux


def high_water_mark() -> int:
    """This process's peak RSS since it started, in bytes (0 where the platform keeps none)."""
    return _maxrss("RUSAGE_SELF")


def largest_child_rss() -> int:
    """The peak RSS of the largest child process waited for so far (grandchildren included when their
    parents waited for them), in bytes; 0 where the platform keeps none."""
    return _maxrss("RUSAGE_CHILDREN")


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
