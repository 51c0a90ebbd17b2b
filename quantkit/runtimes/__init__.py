"""Runtimes: evaluate each format with the engine that will serve it (one module each).

Every runtime produces `DomainScores` for a text: perplexity of the base and of the artifact,
and the token-by-token KL divergence between them, so checks do not care which runtime ran.
A runtime is one module with a `Runtime` plus one line in RUNTIMES, under the (format, runtime) pair
it scores; each format names its default (quantkit.formats: `Format.runtimes`, the first).
"""

from __future__ import annotations

from importlib import import_module

from quantkit.errors import ArtifactError
from quantkit.runtimes.base import BaseFolder, DomainScores, EvaluationSettings, Runtime, ScoredTarget

# (format, runtime) -> "module:class"; imported when used, so a GGUF run never imports torch's model code
RUNTIMES: dict[tuple[str, str], str] = {
    ("compressed-tensors", "transformers"): "quantkit.runtimes.transformers:TransformersRuntime",
    ("gguf", "llama.cpp"): "quantkit.runtimes.llamacpp:LlamaCppRuntime",
}


def runtime_for(fmt: str, runtime: str | None = None) -> Runtime:
    """The runtime that scores format `fmt`: `runtime` by name, else the format's default."""
    from quantkit.formats import FORMATS, format_named

    if fmt not in FORMATS:
        raise ArtifactError(f"no runtime evaluates format '{fmt}'; known formats: {', '.join(FORMATS)}")
    name = runtime or format_named(fmt).default_runtime
    if (fmt, name) not in RUNTIMES:
        known = ", ".join(r for f, r in RUNTIMES if f == fmt) or "none"
        raise ArtifactError(f"runtime '{name}' does not score format '{fmt}'; runtimes for it: {known}")
    module, _, cls = RUNTIMES[(fmt, name)].partition(":")
    return getattr(import_module(module), cls)()


__all__ = ["RUNTIMES", "BaseFolder", "DomainScores", "EvaluationSettings", "Runtime", "ScoredTarget", "runtime_for"]
