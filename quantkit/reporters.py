"""The Reporters a person reads: `RichReporter`'s bars in a terminal and `PlainReporter`'s timestamped lines
in a log (CI). Both implement quantkit.progress.Reporter; the CLI picks one (cli/output.make_reporter).

Step descriptions and messages are plain text, printed as written: they carry user values (paths,
output and domain names), so no reporter reads markup in them. A message's colour is `style`.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterator, TextIO

from quantkit.progress import Task


class _Outcome:
    """How a step's body ended, for its end line: "done" only when it returned; "FAILED" when it raised,
    "interrupted" for Ctrl-C or SIGTERM (KeyboardInterrupt in the CLI) or an exit. Never swallows."""

    def __init__(self) -> None:
        self.word = "FAILED"  # until the body returns: a generator closed mid-step did not finish it either

    @property
    def ok(self) -> bool:
        return self.word == "done "

    def __enter__(self) -> "_Outcome":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if kind is None:
            self.word = "done "
        elif issubclass(kind, (KeyboardInterrupt, SystemExit)):
            self.word = "interrupted"
        return False


class RichReporter:
    """Rich progress bars with elapsed time; one bar per step, nested steps shown below."""

    def __init__(self, console=None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class DescriptionColumn(ProgressColumn):
            """The step's description as written; red once the step failed."""

            def render(self, task) -> Text:
                return Text(task.description, style="red" if task.fields.get("failed") else "progress.description")

        self.console = console or Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            DescriptionColumn(),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}", markup=False),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.steps: list[str] = []

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None, transient: bool = False,
             tokens: int | None = None) -> Iterator[Task]:
        self.steps.append(description)
        task_id = self.progress.add_task(description, total=total, rate="")
        progress = self.progress
        counts_tokens = tokens is not None and total is not None  # the bar counts tokens: show tokens/s

        class _T:
            def advance(self, n: float = 1) -> None:
                progress.advance(task_id, n)
                if counts_tokens:
                    speed = progress.tasks[[t.id for t in progress.tasks].index(task_id)].speed
                    progress.update(task_id, rate=f"{speed:,.0f} tokens/s" if speed else "")

            def update(self, *, completed=None, total=None, description=None) -> None:
                kwargs = {
                    k: v for k, v in dict(completed=completed, total=total, description=description).items() if v is not None
                }
                progress.update(task_id, **kwargs)

        outcome = _Outcome()
        try:
            with outcome:
                yield _T()
        finally:
            t = progress.tasks[[t.id for t in progress.tasks].index(task_id)]
            if transient:
                progress.remove_task(task_id)
            elif outcome.ok:
                # a spinner-only step becomes a full bar when it finishes
                progress.update(task_id, total=t.total or 1, completed=t.total or 1)
            else:
                progress.update(task_id, description=f"{description} ({outcome.word.lower()})", failed=True)
                progress.stop_task(task_id)

    def log(self, message: str, style: str | None = None) -> None:
        from rich.text import Text

        self.progress.console.print(Text(message, style=style or ""), soft_wrap=True)


@dataclass
class _Step:
    description: str
    depth: int
    started: float
    total: float | None = None
    completed: float = 0.0
    transient: bool = False
    counts_tokens: bool = False  # completed/total are tokens: heartbeats show tokens/s and an ETA


class PlainReporter:
    """Timestamped lines for logs, where a progress bar is unreadable.

    One line when a step starts, one when it ends (duration; tokens/s where the step knows its
    tokens), and every `heartbeat` seconds one line for the innermost step still running, so a
    CI log shows that a 30-minute step is alive. Every line is flushed at once. Transient steps
    (the per-batch bars inside calibration) print nothing of their own.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        heartbeat: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.stream = stream or sys.stderr
        self.heartbeat = heartbeat
        self.clock, self.now = clock, now
        self.steps: list[str] = []
        self._active: list[_Step] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PlainReporter":
        if self.heartbeat > 0:
            self._thread = threading.Thread(target=self._beat, name="quantkit-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _line(self, text: str, depth: int = 0) -> None:
        with self._lock:
            self.stream.write(f"{self.now().strftime('%H:%M:%S')} {'  ' * depth}{text}\n")
            self.stream.flush()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self.beat()

    def beat(self) -> None:
        """The heartbeat line for the innermost running step (called by the timer thread)."""
        with self._lock:
            shown = [s for s in self._active if not s.transient]
            step = shown[-1] if shown else None
        if step is None:
            return
        elapsed = self.clock() - step.started
        done = f", {step.completed:g}/{step.total:g}" if step.total else ""
        if step.counts_tokens and step.total and step.completed > 0 and elapsed > 0:
            rate = step.completed / elapsed
            done = (f", {step.completed:,.0f}/{step.total:,.0f} tokens, {rate:,.0f} tokens/s, "
                    f"ETA {_duration((step.total - step.completed) / rate)}")
        self._line(f"… {step.description} ({_duration(elapsed)} so far{done})", step.depth)

    @contextlib.contextmanager
    def task(
        self, description: str, total: float | None = None, transient: bool = False, tokens: int | None = None
    ) -> Iterator[Task]:
        self.steps.append(description)
        description = description.strip()
        with self._lock:
            depth = len([s for s in self._active if not s.transient])
            step = _Step(description, depth, self.clock(), total, 0.0, transient, tokens is not None and total is not None)
            self._active.append(step)
        if not transient:
            self._line(f"start {description}", depth)

        class _T:
            def advance(self, n: float = 1) -> None:
                step.completed += n

            def update(self, *, completed=None, total=None, description=None) -> None:
                if completed is not None:
                    step.completed = completed
                if total is not None:
                    step.total = total
                if description is not None:
                    step.description = description.strip()

        outcome = _Outcome()
        try:
            with outcome:
                yield _T()
        finally:
            with self._lock:
                self._active.remove(step)
            if not transient:
                seconds = self.clock() - step.started
                rate = f", {tokens / seconds:,.0f} tokens/s" if tokens and seconds > 0 and outcome.ok else ""
                self._line(f"{outcome.word} {description} ({_duration(seconds)}{rate})", depth)

    def log(self, message: str, style: str | None = None) -> None:
        self._line(message)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
