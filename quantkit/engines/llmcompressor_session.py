"""What an llm-compressor run needs around it: its tqdm bars as quantkit progress, a disk-offload folder
of quantkit's own, and the layer shapes the preflight reads from config.json on the meta device."""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path
from typing import Iterator

from quantkit.engines.base import EngineJob
from quantkit.progress import Reporter, TqdmBridge

# llm-compressor modules whose tqdm bars become quantkit progress bars
_TQDM_MODULES = (
    "llmcompressor.pipelines.sequential.pipeline",
    "llmcompressor.pipelines.cache",
    "llmcompressor.modifiers.transform.awq.base",
)

@contextlib.contextmanager
def progress_from_tqdm(reporter: Reporter) -> Iterator[None]:
    bridge = TqdmBridge(reporter)
    saved = []
    for name in _TQDM_MODULES:
        mod = importlib.import_module(name)
        if hasattr(mod, "tqdm"):
            saved.append((mod, mod.tqdm))
            mod.tqdm = bridge.tqdm
    error = None
    try:
        yield
    except BaseException as e:
        error = e  # the layers step then ends FAILED/interrupted, not done
        raise
    finally:
        for mod, original in saved:
            mod.tqdm = original
        bridge.close(error)


@contextlib.contextmanager
def offload_folder(job: EngineJob) -> Iterator[Path]:
    """A folder of quantkit's for the disk offload (symlinks into the checkpoint and the weights llm-compressor
    updates, about the model's size), removed when the output is done or fails. glibc is told to return
    freed blocks of 128 kB and more to the system: without it freed layer copies stay in the heap and the
    peak grows with the model (docs/decisions.md)."""
    import ctypes
    import shutil
    import tempfile

    from quantkit.files import cache_dir

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: the peak may grow with the model
        pass
    root = cache_dir() / "offload"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{job.output.name[:60]}-{os.getpid()}-", dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def targeted_linear_shapes(path, targets, ignore, trust_remote_code=False) -> dict[str, tuple[int, int]]:
    """{module name: (out_features, in_features)} of the layers a scheme would quantize.

    Built on the meta device from config.json alone: no weights are read.
    """
    import torch
    from compressed_tensors.utils import match_named_modules
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    shapes = {}
    for name, module in match_named_modules(model, list(targets), list(ignore)):
        weight = getattr(module, "weight", None)
        if weight is not None and weight.dim() == 2:
            shapes[name] = (int(weight.shape[0]), int(weight.shape[1]))
    return shapes
