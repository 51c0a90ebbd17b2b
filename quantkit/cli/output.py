"""Where the CLI prints: errors, tables and sizes are formatted here and nowhere else.

User values (paths, names, sources, messages) are printed as written: a `str` given to `say`, `Table`
or `fail` is never read as rich markup, so `[/bold]` in a folder name prints as `[/bold]` instead of
crashing the command. The CLI's own colours are written with `styled(template, **values)`, the one
place markup is parsed, and the values it fills in are escaped there.
"""

from __future__ import annotations

import contextlib
import os
import string
import sys
from typing import Iterator

from rich import table as rich_table
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from quantkit.files import human_bytes  # noqa: F401 (the CLI modules import it from here)


def _console(stderr: bool = False) -> Console:
    """Where output is not a terminal (a pipe, a CI log) rich would wrap every line at 80 columns (COLUMNS
    unset): a Markdown table of the model card or a `@sha256:` digest would be cut in two. There a line
    is never wrapped; tables are printed at their full width by print_table."""
    c = Console(stderr=stderr)
    c.soft_wrap = not c.is_terminal
    return c


console = _console()
err_console = _console(stderr=True)


class _EscapingFormatter(string.Formatter):
    def format_field(self, value, format_spec: str) -> str:
        return escape(super().format_field(value, format_spec))


_ESCAPING = _EscapingFormatter()


def styled(template: str, *args, **values) -> Text:
    """`template` is the CLI's own markup ("[bold]{path}[/]: ok"); every value is filled in as written."""
    return Text.from_markup(_ESCAPING.format(template, *args, **values))


def literal(value):
    """A str as written (no markup, emoji or highlighting); a Text or other renderable unchanged."""
    return Text(value) if isinstance(value, str) else value


def say(*parts, target: Console | None = None) -> None:
    """Print one line made of strs (as written) and Texts (from styled()); rich does not wrap it, so a
    long path in a log stays on one line."""
    line = Text()
    for part in parts:
        line.append(literal(part))
    (target or console).print(line, soft_wrap=True)


class Table(rich_table.Table):
    """rich's Table with its str title, caption, headers and cells printed as written (cells hold user
    values); a cell the CLI colours is a Text from styled()."""

    def __init__(self, *headers, title=None, caption=None, **kwargs) -> None:
        if isinstance(title, str):
            title = Text(title, style=kwargs.get("title_style") or "table.title")
        if isinstance(caption, str):
            caption = Text(caption, style=kwargs.get("caption_style") or "table.caption")
        super().__init__(*headers, title=title, caption=caption, **kwargs)

    def add_column(self, header="", footer="", **kwargs) -> None:
        super().add_column(literal(header), literal(footer), **kwargs)

    def add_row(self, *cells, **kwargs) -> None:
        super().add_row(*(literal(c) for c in cells), **kwargs)


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
    from quantkit.progress import NullReporter
    from quantkit.reporters import PlainReporter, RichReporter

    mode = progress_mode(requested)
    if mode == "none":
        yield NullReporter()
        return
    reporter = RichReporter(err_console) if mode == "rich" else PlainReporter(sys.stderr)
    with reporter:
        yield reporter


def print_table(table, target: Console | None = None) -> None:
    """A table at full width where output is not a terminal: identifiers are never cut to 80 columns,
    and the title and caption are lines of their own (rich wraps them to the table's width, which
    would cut a recipe path in a title in two)."""
    target = target or console
    if target.is_terminal:
        target.print(table)
        return
    from rich.measure import Measurement

    wide = target.options.update_width(100_000)
    width = Measurement.get(target, wide, table).maximum
    previous = target.width  # print(width=) is capped at the console's width, so widen the console
    target.width = max(width, previous)
    title, caption = table.title, table.caption
    table.title = table.caption = None
    try:
        if title:
            say(title, target=target)
        target.print(table)
        if caption:
            say(caption, target=target)
    finally:
        target.width = previous
        table.title, table.caption = title, caption


def fail(message: str, code: int = 2) -> None:
    err_console.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    sys.exit(code)


# One output object per command: `--json` and the human rendering come from the same records, in one place.
