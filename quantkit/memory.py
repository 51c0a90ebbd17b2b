"""Peak resident memory of one step inside a long-lived process.

On Linux the kernel's high-water mark (VmHWM) can be reset by writing 5 to
/proc/self/clear_refs, which gives an exact per-step peak. Elsewhere we fall back to
sampling RSS from a thread every 20 ms.
"""

from __future__ import annotations

import threading
from pathlib import Path


def _rss_bytes(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakRSS:
    def __init__(self) -> None:
        self.bytes: int | None = None
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = 0

    def __enter__(self) -> "PeakRSS":
        if _reset_hwm() and _rss_bytes("VmHWM") is not None:
            self.method = "VmHWM"
        else:
            import psutil

            proc = psutil.Process()
            self.method = "sampled"

            def sample() -> None:
                while not self._stop.wait(0.02):
                    self._sampled = max(self._sampled, proc.memory_info().rss)

            self._sampled = proc.memory_info().rss
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def read(self) -> int | None:
        """Peak so far in this step."""
        self.bytes = _rss_bytes("VmHWM") if self.method == "VmHWM" else self._sampled
        return self.bytes

    def __exit__(self, *exc) -> None:
        if self._thread:
            self._stop.set()
            self._thread.join()
        self.read()
