"""`quantkit env llama.cpp`: the pinned llama.cpp tools built once from the PyPI sdist of llama-cpp-python
(sha256-checked), with cmake, into the toolchain folder quantkit.toolchains.llamacpp finds them in."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from quantkit.files import sha256_file, staged_folder
from quantkit.progress import NullReporter, Reporter
from quantkit.toolchains.llamacpp import (
    INFO_NAME,
    LLAMA_CPP_COMMIT,
    SDIST_NAME,
    SDIST_SHA256,
    SDIST_VERSION,
    TOOLS,
    LlamaCpp,
    ToolchainError,
    find_toolchain,
    toolchain_dir,
)

CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DGGML_NATIVE=OFF",  # portable (AVX2) binaries: the cache may move between machines of a kind
    "-DGGML_CCACHE=OFF",
    f"-DLLAMA_BUILD_COMMIT={LLAMA_CPP_COMMIT[:9]}",
)


def _check_build_tools() -> str:
    missing = [t for t in ("cmake", "c++") if shutil.which(t) is None]
    if missing:
        raise ToolchainError(
            f"building llama.cpp needs {' and '.join(missing)}; install them (Debian: apt-get install cmake g++)"
        )
    return "Ninja" if shutil.which("ninja") else "Unix Makefiles"


def _run_logged(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise ToolchainError(f"`{' '.join(cmd[:3])} …` failed (exit {proc.returncode}); log {log}:\n{tail}")


def build_toolchain(reporter: Reporter | None = None, jobs: int | None = None, force: bool = False) -> LlamaCpp:
    """Download the pinned sdist, build the tools, install them into the cache folder (atomic)."""
    reporter = reporter or NullReporter()
    existing = find_toolchain()
    if existing and not force:
        return existing
    generator = _check_build_tools()
    jobs = jobs or os.cpu_count() or 2
    dest = toolchain_dir()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quantkit-llamacpp-") as tmp_name, staged_folder(dest, force=True) as staging:
        tmp = Path(tmp_name)
        log = staging / "build.log"
        with reporter.task(f"downloading {SDIST_NAME}=={SDIST_VERSION} source (pip download)"):
            _run_logged([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                         "-d", str(tmp), f"{SDIST_NAME}=={SDIST_VERSION}"], log)
            [sdist] = list(tmp.glob("*.tar.gz"))
            got = sha256_file(sdist)
            if got != SDIST_SHA256:
                raise ToolchainError(f"{sdist.name} has sha256 {got}, expected {SDIST_SHA256}")
        with reporter.task("unpacking llama.cpp sources"):
            with tarfile.open(sdist) as tf:
                tf.extractall(tmp / "src", filter="data")
            [src_root] = list((tmp / "src").iterdir())
            llama_src = src_root / "vendor" / "llama.cpp"
        build = tmp / "build"
        with reporter.task("configuring llama.cpp (cmake)"):
            _run_logged(["cmake", "-S", str(llama_src), "-B", str(build), "-G", generator, *CMAKE_FLAGS], log)
        with reporter.task(f"building {', '.join(TOOLS)} (cmake, {jobs} jobs)"):
            _run_logged(["cmake", "--build", str(build), "-j", str(jobs), "--target", *TOOLS], log)
        with reporter.task("installing tools and converter"):
            (staging / "bin").mkdir()
            for t in TOOLS:
                shutil.copy2(build / "bin" / t, staging / "bin" / t)
            shutil.copy2(llama_src / "convert_hf_to_gguf.py", staging / "convert_hf_to_gguf.py")
            for sub in ("conversion", "gguf-py"):
                shutil.copytree(llama_src / sub, staging / sub)
            shutil.copy2(llama_src / "LICENSE", staging / "LICENSE")
            info = {
                "version": f"llama.cpp@{LLAMA_CPP_COMMIT[:9]} (from {SDIST_NAME} {SDIST_VERSION})",
                "llama_cpp_commit": LLAMA_CPP_COMMIT,
                "source": f"{SDIST_NAME}=={SDIST_VERSION} sdist (PyPI)",
                "source_sha256": SDIST_SHA256,
                "cmake_flags": list(CMAKE_FLAGS),
                "generator": generator,
                "tools": list(TOOLS),
                "architectures": sorted(_registered_architectures(staging / "conversion")),
                "build_seconds": round(time.perf_counter() - started, 1),
            }
            (staging / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    tc = find_toolchain()
    assert tc is not None
    return tc


def _registered_architectures(conversion_dir: Path) -> set[str]:
    """HF architecture names the converter registers (`@ModelBase.register("LlamaForCausalLM", ...)`)."""
    names: set[str] = set()
    for py in conversion_dir.glob("*.py"):
        for args in re.findall(r"@ModelBase\.register\(([^)]*)\)", py.read_text(errors="replace")):
            names.update(re.findall(r"\"([A-Za-z0-9_]+)\"", args))
    return names


