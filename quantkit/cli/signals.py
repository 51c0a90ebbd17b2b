"""SIGINT and SIGTERM from the first instruction of the CLI on: both become KeyboardInterrupt (so every
staging folder is removed on the way out) and are remembered, so the CLI prints one line and exits
128 + the signal number (130, 143) wherever the signal arrived. Imports nothing heavy on purpose."""

from __future__ import annotations

import os
import signal
import sys

RECEIVED: list[int] = []
STARTED = False  # set when the command starts; before that (imports) there is nothing to clean up


def _handler(signum, frame) -> None:  # noqa: ARG001
    RECEIVED.append(signum)
    if not STARTED:
        sys.stderr.write(f"error: interrupted ({name()}) while starting; nothing was written\n")
        sys.stderr.flush()
        os._exit(exit_code())
    raise KeyboardInterrupt


def started() -> None:
    global STARTED
    STARTED = True


def install() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not _handler:
            signal.signal(sig, _handler)


def exit_code() -> int:
    return 128 + (RECEIVED[0] if RECEIVED else signal.SIGINT)


def name() -> str:
    return signal.Signals(RECEIVED[0]).name if RECEIVED else "SIGINT"
