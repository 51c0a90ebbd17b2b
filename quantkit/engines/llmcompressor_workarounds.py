"""Workarounds for llm-compressor 0.14 issues, kept in this one file so they are easy to
find, test and delete once fixed upstream.

- AWQ on CPU: `IntermediatesCache.pin_memory` calls `Tensor.pin_memory()` unconditionally,
  which raises "Cannot access accelerator device when none is available" on CPU-only torch.
  Pinning only speeds up host-to-device copies, so without a device it is a no-op.
- Model leak: the sequential pipeline re-executes each model's forward source in a copied
  module namespace holding `self` (the model) and calls `torch.fx.wrap` there, which files
  that namespace in torch.fx's global `_wrapped_fns_to_patch` for good. Every calibrated
  run thus kept its whole model alive; `release_traced_model` drops those entries.
- Distributed oneshot on CPU ranks: after weight-parallel compression, each rank broadcasts the
  layers it compressed, except layers that execute on the CPU (`skip_cpu=True`: upstream assumes
  CPU means offloaded memory shared by every rank). Ranks with their own copies on CPU (the path
  quantkit tests `--gpus N` on without GPUs) then keep other ranks' layers uncompressed or with
  unset scales; `cpu_ranks_broadcast` makes them broadcast, as they do from a GPU.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from quantkit.device import accelerator_available


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


def release_traced_model(model) -> int:
    """Forget torch.fx.wrap registrations whose namespace holds `model`; returns how many."""
    from torch.fx import _symbolic_trace

    registry = getattr(_symbolic_trace, "_wrapped_fns_to_patch", None)
    if not isinstance(registry, dict):
        return 0
    stale = [key for key, namespace in registry.items() if namespace.get("self") is model]
    for key in stale:
        del registry[key]
    return len(stale)


@contextlib.contextmanager
def cpu_ranks_broadcast() -> Iterator[list[str]]:
    """Make GPTQ and the quantization modifier broadcast CPU-executed layers between ranks."""
    import functools
    import importlib

    from llmcompressor.utils.dist import broadcast_qparams_and_cleanup

    users = [importlib.import_module(m) for m in ("llmcompressor.modifiers.gptq.base",
                                                   "llmcompressor.modifiers.quantization.quantization.base")]
    patched = functools.partial(broadcast_qparams_and_cleanup, skip_cpu=False)
    for module in users:
        module.broadcast_qparams_and_cleanup = patched
    try:
        yield ["broadcast_qparams_and_cleanup(skip_cpu=False) (ranks with their own copies on CPU)"]
    finally:
        for module in users:
            module.broadcast_qparams_and_cleanup = broadcast_qparams_and_cleanup
