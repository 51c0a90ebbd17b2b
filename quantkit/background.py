"""Work that overlaps the main thread: hashing (hashlib releases the GIL) and subprocesses (llama.cpp's
converter) while the main thread imports, tokenizes or calibrates."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Callable, TypeVar

T = TypeVar("T")


def in_background(fn: Callable[..., T], *args, name: str = "quantkit-background") -> Future:
    """Run `fn(*args)` on a daemon thread; its result or exception comes from `.result()`. A daemon thread,
    not an executor: interpreter exit (Ctrl-C) would join an executor's workers and wait for them."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever asks for the result
            future.set_exception(e)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future
