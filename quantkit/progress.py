"""Progress reporting for long steps.

The library reports through a `Reporter`; the CLI passes a rich one in a terminal and a plain,
timestamped one where output is a log (CI), library callers get silence by default. Engines
never import rich directly; the terminal and log reporters are in quantkit.reporters.

Step descriptions and messages are plain text, printed as written: they carry user values (paths,
output and domain names), so no reporter reads markup in them. A message's colour is `style`.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Iterable, Iterator, Protocol


class Task(Protocol):
    def advance(self, n: float = 1) -> None: ...
    def update(self, *, completed: float | None = None, total: float | None = None, description: str | None = None) -> None: ...


class Reporter(Protocol):
    # tokens: how many tokens the step processes, for the tokens/s its end line reports; a step whose
    # `total` is also given advances in tokens, and its bar or heartbeat shows tokens/s and an ETA
    def task(self, description: str, total: float | None = None, transient: bool = False,
             tokens: int | None = None) -> contextlib.AbstractContextManager[Task]: ...
    # style: a rich style for the whole line ("red" for a failure); reporters without colour ignore it
    def log(self, message: str, style: str | None = None) -> None: ...


class _NullTask:
    def advance(self, n: float = 1) -> None:
        pass

    def update(self, **_: object) -> None:
        pass


class NullReporter:
    """Reports nothing; records the steps so tests can see what was reported."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.messages: list[str] = []

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None, transient: bool = False,
             tokens: int | None = None) -> Iterator[Task]:
        self.steps.append(description)
        yield _NullTask()

    def log(self, message: str, style: str | None = None) -> None:
        self.messages.append(message)


@contextlib.contextmanager
def timed(timings: dict, key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(time.perf_counter() - start, 3)


# ------------------------------------------------------------------ tqdm bridge

_LAYER_DESC = re.compile(r"^\((\d+)/(\d+)\): (\w+)")


class TqdmBridge:
    """Routes the tqdm bars of a third-party library into a Reporter.

    llm-compressor reports calibration as one tqdm loop per layer-subgraph pass with a
    description like "(3/31): Calibrating"; those become one persistent "layers" bar plus a
    transient bar for the batches of the current pass.
    """

    def __init__(self, reporter: Reporter, layer_label: str = "calibrating layers") -> None:
        self.reporter = reporter
        self.layer_label = layer_label
        self._layers_cm = None
        self._layers: Task | None = None

    def close(self, error: BaseException | None = None) -> None:
        """End the layers step; `error` is what ended the calibration, if it raised (the step then reads
        FAILED or interrupted, not done)."""
        if self._layers_cm is not None:
            cm, self._layers_cm = self._layers_cm, None
            if error is None:
                cm.__exit__(None, None, None)
            else:
                cm.__exit__(type(error), error, error.__traceback__)  # the step's end line; `error` is not re-raised here

    def _layer_task(self, done: int, total: int, phase: str) -> None:
        if self._layers is None:
            self._layers_cm = self.reporter.task(self.layer_label, total=total)
            self._layers = self._layers_cm.__enter__()
        self._layers.update(completed=done, total=total, description=f"{self.layer_label} ({phase.lower()} {done + 1}/{total})")

    def tqdm(self, iterable: Iterable | None = None, desc: str | None = None, total: int | None = None, **_: object):
        bridge = self

        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        m = _LAYER_DESC.match(desc or "")
        if m:
            bridge._layer_task(int(m.group(1)) - 1, int(m.group(2)), m.group(3))

        class _Bar:
            def __init__(self) -> None:
                self.n = 0

            def __iter__(self):
                with bridge.reporter.task(f"  {desc or 'working'}", total=total, transient=True) as t:
                    for item in iterable:  # type: ignore[union-attr]
                        yield item
                        t.advance()
                if m and int(m.group(1)) == int(m.group(2)):
                    bridge._layers.update(completed=int(m.group(2)))  # type: ignore[union-attr]

            def update(self, n: float = 1) -> None:
                self.n += n

            def set_description(self, *_: object, **__: object) -> None:
                pass

            def set_postfix(self, *_: object, **__: object) -> None:
                pass

            def close(self) -> None:
                pass

            def __enter__(self):
                return self

            def __exit__(self, *exc) -> None:
                pass

        return _Bar()
