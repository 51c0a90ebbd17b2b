"""The `quantkit` command: composes one module per command group and formats errors once."""

from __future__ import annotations

from quantkit.cli import signals

signals.install()  # before anything slow is imported: a signal during start-up ends as cleanly as one later

import atexit  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from typing import NoReturn  # noqa: E402

import typer  # noqa: E402

from quantkit.cli import cache as cache_cli  # noqa: E402
from quantkit.cli import env as env_cli  # noqa: E402
from quantkit.cli import plan as plan_cli  # noqa: E402
from quantkit.cli import push as push_cli  # noqa: E402
from quantkit.cli import quantize as quantize_cli  # noqa: E402
from quantkit.cli import recipes as recipes_cli  # noqa: E402
from quantkit.cli import serving as serving_cli  # noqa: E402
from quantkit.cli import validate as validate_cli  # noqa: E402
from quantkit.cli.options import ArtifactArg, JsonOpt, VerboseOpt  # noqa: E402
from quantkit.cli.output import configure, fail, styled  # noqa: E402
from quantkit.cli.render import Output  # noqa: E402

app = typer.Typer(
    name="quantkit",
    help="Quantize Hugging Face LLM checkpoints from declarative recipes (AWQ, GPTQ, INT8, FP8, GGUF), validate them, and smoke-test them in vLLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main_options(verbose: VerboseOpt = False) -> None:
    """Quantize Hugging Face LLM checkpoints from declarative recipes (AWQ, GPTQ, INT8, FP8, GGUF), validate them, and smoke-test them in vLLM."""
    configure(verbose)  # before any command imports llm-compressor or transformers


quantize_cli.register(app)
plan_cli.register(app)
validate_cli.register(app)
serving_cli.register(app)
push_cli.register(app)
app.add_typer(recipes_cli.app, name="recipes")
app.add_typer(env_cli.app, name="env")
cache_cli.register(app)


@app.command("inspect")
def inspect_command(artifact: ArtifactArg, as_json: JsonOpt = False) -> None:
    """Verify an artifact against its manifest (every file's sha256) and summarise it."""
    from quantkit.artifact import Artifact

    a = Artifact.load(artifact, verify=True)
    m = a.manifest
    out = Output(m.to_json())
    out.line(styled("[bold]{}[/]", a.path), f": {len(m.files)} files match {a.path.name}/quantkit.json")
    out.line(f"  {m.method} {m.scheme} ({m.format}): {m.description}")
    out.line(f"  base: {m.base_model.source} fingerprint {m.base_model.fingerprint[:16]}")
    cal = m.calibration
    out.line(f"  calibration: {cal.source} {cal.num_tokens} tokens, fingerprint {cal.fingerprint[:16]}" if cal else "  calibration: none")
    from quantkit.formats import format_named

    out.lines(lambda: [f"  {line}" for line in format_named(m.format).size_lines(m, a.targets())])
    out.emit(as_json)


def main() -> None:
    try:
        _main()
    except SystemExit as e:
        exit_now(e.code)


def exit_now(code: object) -> NoReturn:
    """Exit with `code` without tearing the interpreter down: freeing the modules of a process that has
    imported transformers takes 1.2-1.6 s (issue 14), with nothing left to save. What a normal exit does
    that matters still happens: the atexit handlers run (logging, tempfile, Ray, multiprocessing) and
    stdout and stderr are flushed. A non-daemon thread still running, a non-integer code or a failing
    flush get Python's own exit, which handles them."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if others or not (code is None or isinstance(code, int)):
        raise SystemExit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: Python's exit reports it as it always has
        raise SystemExit(code) from None
    atexit._run_exitfuncs()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code or 0)


def _main() -> None:
    from quantkit.errors import QuantkitError

    signals.started()
    try:
        app()
    except QuantkitError as e:
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        interrupted()
    except SystemExit:
        if signals.RECEIVED:  # Typer turns a KeyboardInterrupt into a silent exit
            interrupted()
        raise
    except BaseException:
        if signals.RECEIVED:  # a library that wraps the KeyboardInterrupt (transformers' lazy imports: RuntimeError)
            interrupted()
        raise


def interrupted() -> None:
    """One line, then exit 128 + the signal at once. Unwinding has already removed every staging folder;
    a normal interpreter exit could still turn into a death by SIGINT (CPython remembers a
    KeyboardInterrupt that crossed a nested interpreter call, even once caught: seen here about once in
    15 SIGTERMs while a background hash thread ran)."""
    try:
        fail(f"interrupted ({signals.name()}); no partial artifact was left behind", signals.exit_code())
    except SystemExit as e:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(e.code if isinstance(e.code, int) else 1)


if __name__ == "__main__":
    sys.exit(main())
