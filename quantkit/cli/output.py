"""Where the CLI prints: errors, tables and sizes are formatted here and nowhere else."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from rich.console import Console

from quantkit.files import human_bytes  # noqa: F401 (the CLI modules import it from here)

console = Console()
err_console = Console(stderr=True)




VERBOSE = False  # set once by the app callback (quantkit -v COMMAND)


def configure(verbose: bool) -> None:
    """What the `quantkit` callback does before any command: remember --verbose, quiet the libraries."""
    global VERBOSE
    VERBOSE = verbose
    quiet_libraries(verbose)


def quiet_libraries(verbose: bool) -> None:
    """Keep the terminal to quantkit's own progress bars unless --verbose.

    Must run before llm-compressor / transformers are imported: both read these at import.
    """
    if verbose:
        return
    # llm-compressor logs to stdout, which must stay clean for --json
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    # torch.fx warns once per traced layer about is_fx_tracing semantics
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
    # Some libraries pass disable=False explicitly, which TQDM_DISABLE cannot override.
    import tqdm.std

    original_init = tqdm.std.tqdm.__init__

    def _silent_init(self, *args, **kwargs):
        kwargs["disable"] = True
        original_init(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = _silent_init


def library_logs_to_stderr() -> None:
    """llm-compressor logs to stdout (loguru); move it to stderr so stdout carries only results."""
    # it also logs while being imported, so keep it disabled until the sinks are replaced
    previous = os.environ.get("LLM_COMPRESSOR_LOG_DISABLED")
    os.environ["LLM_COMPRESSOR_LOG_DISABLED"] = "true"
    try:
        import llmcompressor  # noqa: F401 - configures its loguru sinks at import
    finally:
        if previous is None:
            del os.environ["LLM_COMPRESSOR_LOG_DISABLED"]
        else:
            os.environ["LLM_COMPRESSOR_LOG_DISABLED"] = previous
    from loguru import logger

    logger.enable("llmcompressor")
    try:
        logger.level("METRIC")
    except ValueError:  # registered by llm-compressor's configure_logger, skipped while disabled
        logger.level("METRIC", no=38)
    logger.remove()
    logger.add(sys.stderr, level="INFO" if VERBOSE else "ERROR",
               format="{time:HH:mm:ss} | llmcompressor | {level} - {message}")


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM ends a command like Ctrl-C: staging folders are removed on the way out, exit 143
    (quantkit.cli.signals; installed by the CLI at start-up, installed here for callers of a command)."""
    from quantkit.cli import signals

    signals.install()
    signals.started()
    yield


def progress_mode(requested=None) -> str:
    """rich in a terminal; plain where stdout or stderr is not one (CI logs, pipes)."""
    from quantkit.cli.options import ProgressMode

    modes = [m.value for m in ProgressMode]
    mode = getattr(requested, "value", requested) or os.environ.get("QUANTKIT_PROGRESS") or "auto"
    if mode not in modes:
        from quantkit.errors import QuantkitError

        raise QuantkitError(f"QUANTKIT_PROGRESS={mode!r}: expected one of {', '.join(modes)}")
    if mode == "auto":
        return "rich" if sys.stdout.isatty() and sys.stderr.isatty() else "plain"
    return mode


@contextlib.contextmanager
def make_reporter(requested=None) -> Iterator:
    """The Reporter for --progress: rich bars, timestamped lines, or nothing (all on stderr)."""
    from quantkit.progress import NullReporter, PlainReporter, RichReporter

    mode = progress_mode(requested)
    if mode == "none":
        yield NullReporter()
        return
    reporter = RichReporter(err_console) if mode == "rich" else PlainReporter(sys.stderr)
    with reporter:
        yield reporter


def print_table(table, target: Console | None = None) -> None:
    """A table at full width where output is not a terminal: identifiers are never cut to 80 columns."""
    target = target or console
    if target.is_terminal:
        target.print(table)
        return
    from rich.measure import Measurement

    wide = target.options.update_width(100_000)
    width = Measurement.get(target, wide, table).maximum
    previous = target.width  # print(width=) is capped at the console's width, so widen the console
    target.width = max(width, previous)
    try:
        target.print(table)
    finally:
        target.width = previous


def fail(message: str, code: int = 2) -> None:
    from rich.text import Text

    err_console.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)
    sys.exit(code)
