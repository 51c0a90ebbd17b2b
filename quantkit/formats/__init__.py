"""Formats: what an artifact of each format holds, and every fact about it that others ask.

A format module owns its artifact's targets (the deployable models in the folder), its typed engine
record, its default runtime, the quantization name vLLM reports for it, whether lm-eval can score it,
the model card's library, tags and run snippets, its OCI config value, its file roles, its size text
and its precision classes. Nobody else branches on a format's name: they call `format_named(name)`.
A new format is one module here plus one line in FORMATS (docs/architecture.md, "Add a format").
"""

from __future__ import annotations

from importlib import import_module

from quantkit.errors import ArtifactError
from quantkit.formats.base import Format, Target

# manifest `format` value -> "module:class"
FORMATS: dict[str, str] = {
    "compressed-tensors": "quantkit.formats.compressed_tensors:CompressedTensors",
    "gguf": "quantkit.formats.gguf:GGUF",
}
_loaded: dict[str, Format] = {}


def format_named(name: str) -> Format:
    if name not in FORMATS:
        raise ArtifactError(f"unknown format {name!r}; known formats: {', '.join(FORMATS)}")
    if name not in _loaded:
        module, _, cls = FORMATS[name].partition(":")
        _loaded[name] = getattr(import_module(module), cls)()
    return _loaded[name]


def format_quantized_as(quant_method) -> Format | None:
    """The format whose checkpoints declare this `quantization_config.quant_method` (None: no format of quantkit's)."""
    for name in FORMATS:
        fmt = format_named(name)
        if quant_method is not None and fmt.vllm_quantization == quant_method:
            return fmt
    return None


__all__ = ["FORMATS", "Format", "Target", "format_named", "format_quantized_as"]
