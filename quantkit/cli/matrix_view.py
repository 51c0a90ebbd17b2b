"""The matrix display: one table of every job (queued / running with its stage / made / kept / failed),
live in a terminal, one timestamped line per change in a log."""

from __future__ import annotations

import threading
import time
from datetime import datetime

from rich.live import Live
from rich.text import Text

from quantkit.cli.output import Table, err_console, progress_mode, say
from quantkit.executors import Board

STYLES = {"queued": "dim", "running": "cyan", "made": "green", "kept": "green", "failed": "red"}


def board_table(board: Board, title: str) -> Table:
    counts = board.counts()
    table = Table(title=f"{title}: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n), title_justify="left")
    for col in ("job", "state", "stage", "attempts", "time", "host"):
        table.add_column(col, no_wrap=col == "job")
    with board.lock:
        states = list(board.jobs.values())
    for s in states:
        table.add_row(s.id, Text(s.state, style=STYLES.get(s.state, "")), s.stage, str(s.attempts or ""),
                      f"{s.seconds:.1f} s" if s.seconds is not None else "", s.host or "")
    return table


def watch(board: Board, title: str, work, progress=None):
    """Run `work()` in a thread while showing the board; returns what work returned (or raises what it raised)."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = e
        finally:
            board.changed.set()

    thread = threading.Thread(target=target, name="quantkit-matrix", daemon=True)
    mode = progress_mode(progress)
    thread.start()
    if mode == "rich":
        with Live(board_table(board, title), console=err_console, refresh_per_second=4) as live:
            while thread.is_alive():
                board.changed.wait(0.5)
                board.changed.clear()
                live.update(board_table(board, title))
    else:
        seen: dict[str, tuple] = {}
        shown_log = 0
        while True:
            alive = thread.is_alive()
            with board.lock:
                current = {i: (s.state, s.stage, s.attempts) for i, s in board.jobs.items()}
            for i, value in current.items():
                if mode == "plain" and seen.get(i) != value:
                    state, stage, attempts = value
                    detail = f" ({stage})" if stage else ""
                    retry = f", attempt {attempts}" if attempts > 1 else ""
                    say(f"{datetime.now():%H:%M:%S} {i}: {state}{detail}{retry}", target=err_console)
            seen = current
            for line in board.log[shown_log:]:
                if mode == "plain":
                    say(f"{datetime.now():%H:%M:%S} {line}", target=err_console)
            shown_log = len(board.log)
            if not alive:
                break
            board.changed.wait(1.0)
            board.changed.clear()
            time.sleep(0.05)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
