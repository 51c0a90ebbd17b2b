"""`quantkit quantize RECIPE`: produce every output of a recipe."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from quantkit.cli.options import ForceOpt, JsonOpt, OnlyOpt, OutputDirOpt, ProgressOpt, RecipeArg, SetOpt
from quantkit.cli.output import Table, human_bytes, library_logs_to_stderr, make_reporter, sigterm_as_exit
from quantkit.cli.render import Output


def quantize_command(
    recipe: RecipeArg,
    set_: SetOpt = None,
    output_dir: OutputDirOpt = None,
    only: OnlyOpt = None,
    force: ForceOpt = False,
    force_space: Annotated[bool, typer.Option("--force-space", help="Start even when the estimated artifact size exceeds the free disk space.")] = False,
    force_memory: Annotated[bool, typer.Option("--force-memory", help="Start even when the estimated peak memory exceeds the memory available.")] = False,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
    executor: Annotated[str, typer.Option("--executor", help="Where the jobs run: local (this machine) or ray (a Ray cluster).")] = "local",
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Jobs at once, each in its own worker process (default: all in this process, one after another; with --executor ray: as many as the cluster has room for).", show_default=False)] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", envvar="RAY_ADDRESS", help="Ray cluster to submit to (default: $RAY_ADDRESS, else a local one started for this run).", show_default=False)] = None,
    retries: Annotated[int, typer.Option("--retries", help="Retries of a job that crashed or whose worker died (not of bad input or a failed gate).")] = 1,
    validate_: Annotated[bool, typer.Option("--validate", help="Validate each artifact in its job, right after it is made (gates fail the job).")] = False,
    worker_python: Annotated[Optional[str], typer.Option("--worker-python", help="Python interpreter each job runs under, on the worker (an environment with quantkit installed; default: this one's).", show_default=False)] = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", help="GPUs for one model's calibration: N > 1 runs llm-compressor's distributed oneshot as N torchrun ranks (sets model.gpus).", show_default=False)] = None,
) -> None:
    """Quantize a model (or a matrix of models × calibration sets) into every output of RECIPE
    (AWQ, GPTQ, INT8, FP8, RTN, GGUF).

    Examples:

      quantkit quantize recipes/smollm2-135m.yaml

      quantkit quantize recipes/smollm2-135m.yaml --only smollm2-135m-fp8-dynamic --force

      quantkit quantize recipes/smollm2-135m.yaml --set calibration.num_samples=16 -o /tmp/out

      quantkit quantize recipes/matrix.yaml --executor ray --ray-address 10.0.0.1:6379 --validate

      quantkit quantize recipes/matrix.yaml --executor ray -o s3://bucket/release-7 --jobs 8
    """
    from quantkit.engines import engine_for
    from quantkit.jobs import RunOptions
    from quantkit.output_roots import is_url
    from quantkit.quantize import quantize_run
    from quantkit.recipe_loader import load_recipe

    parsed = load_recipe(recipe, set_ or [])
    if gpus is not None:
        check_gpus(gpus)
        parsed = parsed.with_gpus(gpus)
    options = RunOptions(force=force, force_space=force_space, force_memory=force_memory, retries=retries, validate=validate_)
    if executor != "local" or jobs is not None or validate_ or worker_python or is_url(output_dir or parsed.output_dir):
        return _run_on_executor(parsed, str(recipe), output_dir, only, executor, jobs, ray_address, options, progress,
                                as_json, worker_python)
    if any(engine_for(o.method).in_process_torch for o in parsed.outputs):
        library_logs_to_stderr()  # imports llm-compressor: only for a recipe that will run it
    with sigterm_as_exit(), make_reporter(progress) as reporter:
        run = quantize_run(parsed, output_dir=output_dir, only=only, options=options, reporter=reporter)
    Output(run.rows()).table(results_table(run.artifacts)).emit(as_json)
    if run.failed:
        raise run.error()


def _ratio_text(a) -> str:
    from quantkit.formats import format_named

    return format_named(a.manifest.format).ratio_text(a.manifest, a.targets())


def _row(a) -> dict:
    m = a.manifest
    return {
        "name": a.name,
        "method": m.method,
        "scheme": m.scheme,
        "size_bytes": m.size_bytes,
        "compression_ratio": m.compression_ratio,
        "time_s": m.timings_s["total_s"],
        "peak_rss_bytes": m.peak_rss_bytes,
    }


def results_table(artifacts) -> Table:
    folders = sorted({str(a.path.parent) for a in artifacts})
    table = Table(title="quantkit quantize", title_justify="left", caption=f"written to {', '.join(folders)}" if folders else None)
    table.add_column("artifact", justify="left", no_wrap=True)
    for col, just in (("method", "left"), ("scheme", "left"), ("size", "right"),
                      ("vs float", "right"), ("time", "right"), ("peak RSS", "right")):
        table.add_column(col, justify=just)
    for a in artifacts:
        r = _row(a)
        table.add_row(
            a.name, r["method"], r["scheme"], human_bytes(r["size_bytes"]),
            _ratio_text(a),
            f"{r['time_s']:.1f} s", human_bytes(r["peak_rss_bytes"]),
        )
    return table


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize_command)
    app.command("status")(status_command)


def status_command(
    recipe: RecipeArg,
    set_: SetOpt = None,
    output_dir: OutputDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Where each output of RECIPE stands: up to date, to redo (which inputs changed), or not made;
    and the staging folders of runs in progress or killed. Loads no model weights.

    Example: quantkit status recipes/smollm2-135m.yaml -o out
    """
    from quantkit.recipe_loader import load_recipe
    from quantkit.resume import status

    parsed = load_recipe(recipe, set_ or [])
    with sigterm_as_exit(), make_reporter(None) as reporter:
        rows = status(parsed, output_dir, reporter)
    table = Table(title=f"{recipe}: {sum(r['state'] == 'up to date' for r in rows)} of {len(rows)} outputs up to date",
                  title_justify="left")
    for col in ("output", "state", "why", "runs"):
        table.add_column(col)
    for r in rows:
        runs = [f"running (pid {x['pid']})" for x in r["running"]] + [f"killed run's staging (pid {x['pid']})"
                                                                      for x in r["stale_partials"]]
        table.add_row(r["output"], r["state"], r["reason"], ", ".join(runs))
    Output(rows).table(table).emit(as_json)


def _run_on_executor(parsed, recipe_path: str, output_dir, only, executor: str, jobs, ray_address, options,
                     progress, as_json: bool, worker_python: str | None = None) -> None:
    from quantkit.cli.matrix_view import watch
    from quantkit.errors import RecipeError
    from quantkit.executors import Board, executor_for, run_jobs
    from quantkit.jobs import plan
    from quantkit.output_roots import is_url, root_problems
    from quantkit.preflight import preflight_problems

    selected = plan(parsed, output_dir, only)
    problems = preflight_problems(parsed, output_dir)
    root = output_dir or parsed.output_dir
    if is_url(root):
        problems += [p for p in root_problems(root, executor) if p not in problems]
    if problems:
        raise RecipeError(recipe_path, problems)
    runner = executor_for(executor, jobs=jobs, address=ray_address)
    if worker_python:
        check_worker_python(worker_python, executor)
    board = Board.of([j.id for j in selected])
    title = f"quantkit quantize {recipe_path} ({executor}{f', {jobs} at once' if jobs else ''})"
    with sigterm_as_exit():
        run = watch(board, title, lambda: run_jobs(selected, runner, board, options, worker_python), progress)
    Output(run.rows()).table(_summary_table(run, title)).emit(as_json)
    if run.failed:
        raise run.error()


def _summary_table(run, title: str) -> Table:
    table = Table(title=f"{title}: {run.seconds:.1f} s", title_justify="left")
    for col in ("job", "result", "attempts", "time", "host", "artifact"):
        table.add_column(col, no_wrap=col in ("job", "artifact"))
    for r in sorted(run.results, key=lambda r: r.id):
        table.add_row(r.id, r.status, str(r.attempts), f"{r.seconds or 0:.1f} s", r.host or "", r.dest or "")
    return table


def check_worker_python(python: str, executor: str) -> None:
    """--worker-python must be an interpreter with quantkit, checked here for the local executor (a
    Ray worker checks its own: the path is one on the nodes, not necessarily on this machine)."""
    import subprocess

    from quantkit.errors import QuantkitError

    if executor != "local":
        return
    try:
        probe = subprocess.run([python, "-c", "import quantkit.cli.main"], capture_output=True, text=True, timeout=120)
    except OSError as e:
        raise QuantkitError(f"--worker-python {python}: cannot run it ({e.strerror or e})") from None
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise QuantkitError(f"--worker-python {python}: it cannot import quantkit ({last}); "
                            "install quantkit in that environment, or leave the option out")


def check_gpus(requested: int) -> None:
    from quantkit.device import gpus_problem
    from quantkit.errors import QuantkitError

    problem = gpus_problem(requested)
    if problem:
        raise QuantkitError(problem)
