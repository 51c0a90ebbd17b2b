"""`quantkit env`: what quantkit runs on, and the external toolchains it builds once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from quantkit.cli.output import console, err_console

app = typer.Typer(help="Show the environment; build the llama.cpp toolchain.", invoke_without_command=True)


@app.callback()
def show(ctx: typer.Context) -> None:
    """Print library versions, accelerator, cache folder and toolchains (attach this to bug reports)."""
    if ctx.invoked_subcommand is not None:
        return
    from quantkit.artifact import library_versions
    from quantkit.engines.llmcompressor_workarounds import accelerator_available
    from quantkit.sources.models import cache_dir
    from quantkit.toolchains.llamacpp import find_toolchain, toolchain_dir

    for k, v in library_versions().items():
        console.print(f"{k}: {v}", highlight=False)
    console.print(f"accelerator: {'yes' if accelerator_available() else 'none (CPU only)'}", highlight=False)
    console.print(f"cache: {cache_dir()}", highlight=False)
    tc = find_toolchain()
    console.print(
        f"llama.cpp: {tc.version} in {tc.root}" if tc else f"llama.cpp: not built (expected in {toolchain_dir()}; run `quantkit env llama.cpp`)",
        highlight=False,
    )


@app.command("llama.cpp")
def llamacpp_command(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the toolchain is already cached.")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Parallel compile jobs (default: all cores).")] = None,
) -> None:
    """Build the pinned llama.cpp tools (quantize, imatrix, perplexity, tokenize, completion) once.

    Downloads the llama-cpp-python sdist from PyPI (sha256-pinned), builds with cmake, and caches
    the tools with llama.cpp's converter under the quantkit cache. Needs cmake and a C++ compiler.
    """
    from quantkit.progress import RichReporter
    from quantkit.toolchains.llamacpp import build_toolchain, find_toolchain

    existing = find_toolchain()
    if existing and not force:
        console.print(f"llama.cpp toolchain ready: {existing.version} in {existing.root}", highlight=False)
        return
    with RichReporter(err_console) as reporter:
        tc = build_toolchain(reporter, jobs=jobs, force=force)
    console.print(f"built {tc.version} in {tc.info['build_seconds']} s → {tc.root}", highlight=False)
