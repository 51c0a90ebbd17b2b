"""What this machine computes on: an accelerator for torch, a CUDA GPU for vLLM's build choice."""

from __future__ import annotations

import shutil
import subprocess


def accelerator_available() -> bool:
    """torch sees an accelerator (CUDA, ROCm, XPU, MPS)."""
    import torch

    acc = getattr(torch, "accelerator", None)
    return bool(acc and acc.is_available()) or torch.cuda.is_available()


def gpu_available() -> bool:
    """An NVIDIA GPU answers `nvidia-smi -L` (without importing torch: decides which vLLM wheel to install)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


CPU_RANKS_ENV = "QUANTKIT_CPU_RANKS"  # 1: `--gpus N` runs N CPU ranks over gloo where there is no GPU (tests)


def gpus_problem(requested: int, label: str = "--gpus") -> str | None:
    """Why `--gpus requested` cannot run here (None when it can): each rank of llm-compressor's
    distributed oneshot takes one CUDA device."""
    import os

    import torch

    if requested < 1:
        return f"{label} {requested}: must be at least 1"
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found >= requested or (found == 0 and requested > 1 and os.environ.get(CPU_RANKS_ENV) == "1"):
        return None
    return (f"{label} {requested}: this machine has {found} CUDA GPU(s) (torch.cuda.device_count()); run without "
            f"--gpus (quantize then uses {'the GPU' if found else 'the CPU'}), on a machine with {requested}, or spread "
            "a matrix's jobs over several machines' GPUs with --executor ray (docs/scaling.md)")


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str) -> str:
    """`auto` is the CUDA GPU when torch sees one, else the CPU; `cuda`/`cuda:N` must exist."""
    import re

    import torch

    from quantkit.errors import QuantkitError

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if not m:
        raise QuantkitError(f"--device {device!r}: expected {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise QuantkitError(f"--device {device}: torch sees no CUDA GPU on this machine (torch {torch.__version__}); "
                            "use --device cpu or auto")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise QuantkitError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return f"cuda:{index}"


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` is bfloat16 on a GPU and float32 on the CPU."""
    from quantkit.errors import QuantkitError

    dtype = (dtype or "auto").strip().lower()
    if dtype not in DTYPE_CHOICES:
        raise QuantkitError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPE_CHOICES)}")
    if dtype == "auto":
        return "float32" if device == "cpu" else "bfloat16"
    return dtype


def device_class(device: str) -> str:
    """What a cached result computed on `device` may be reused on: the CPU, or one kind of GPU."""
    if device == "cpu":
        return "cpu"
    import torch

    return f"cuda/{torch.cuda.get_device_name(torch.device(device))}"
