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
