"""The serving stage's time budget (`--serve-timeout`) and waits that a signal or the budget can end.

Requests run in daemon threads and the calling thread only waits for them: a SIGTERM or Ctrl-C
(KeyboardInterrupt in the CLI) is raised at once in the waiting thread instead of after the last
streamed token, and an expired budget raises `ServeTimeout` there. Either way the caller stops the
server, which ends the requests still in flight; daemon threads never hold up the interpreter's exit.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

T = TypeVar("T")


class ServeTimeout(Exception):
    """The serving stage's budget ran out (not a QuantkitError: serve_test records it and goes on)."""


@dataclass
class Budget:
    seconds: float | None  # None: no limit
    started: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> float | None:
        return None if self.seconds is None else self.started + self.seconds

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    @property
    def reason(self) -> str:
        return f"not measured: serve timeout of {self.seconds:g} s reached"


def wait_for(threads: list[threading.Thread], deadline: float | None) -> None:
    """Join every thread; ServeTimeout when `deadline` (time.monotonic) passes first."""
    for t in threads:
        t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            raise ServeTimeout


def within(deadline: float | None, fn: Callable[[], T]) -> T:
    """fn() in a daemon thread, waited for until `deadline`; its exception is raised here."""
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as e:  # handed to the waiting thread, raised there
            outcome.append((False, e))

    thread = threading.Thread(target=run, name="quantkit-serve-request", daemon=True)
    thread.start()
    wait_for([thread], deadline)
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]
