"""Workarounds that let llm-compressor run on a machine without an accelerator.

Kept in this one file so they are easy to find, test and delete once fixed upstream.

- AWQ: `IntermediatesCache.pin_memory` calls `Tensor.pin_memory()` unconditionally, which
  raises "Cannot access accelerator device when none is available" on CPU-only torch.
  Pinning only speeds up host-to-device copies, so without a device it is a no-op.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


def accelerator_available() -> bool:
    import torch

    acc = getattr(torch, "accelerator", None)
    return bool(acc and acc.is_available()) or torch.cuda.is_available()


@contextlib.contextmanager
def cpu_compat() -> Iterator[list[str]]:
    """Apply the CPU workarounds for the duration of a oneshot call; yields the names applied."""
    applied: list[str] = []
    if accelerator_available():
        yield applied
        return
    from llmcompressor.pipelines.cache import IntermediatesCache

    original = IntermediatesCache.pin_memory

    def _no_pin(self, batch_index, input_names=None):  # noqa: ARG001 - same signature as upstream
        return None

    IntermediatesCache.pin_memory = _no_pin
    applied.append("IntermediatesCache.pin_memory disabled (no accelerator)")
    try:
        yield applied
    finally:
        IntermediatesCache.pin_memory = original
