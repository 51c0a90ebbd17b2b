"""Runtimes: evaluate each format with the engine that will serve it (one module each).

Every runtime produces `DomainScores` for a text: perplexity of the base and of the artifact,
and the token-by-token KL divergence between them, so checks do not care which runtime ran.
A new format is one module with a `Runtime` plus one line in RUNTIMES.
"""

from __future__ import annotations

from importlib import import_module

from quantkit.errors import ArtifactError
from quantkit.runtimes.base import BaseFolder, DomainScores, EvaluationSettings, Runtime, ScoredTarget

# format -> "module:class"; imported when used, so a GGUF run never imports torch's model code
RUNTIMES: dict[str, str] = {
    "compressed-tensors": "quantkit.runtimes.transformers:TransformersRuntime",
    "gguf": "quantkit.runtimes.llamacpp:LlamaCppRuntime",
}


def runtime_for(fmt: str) -> Runtime:
    if fmt not in RUNTIMES:
        raise ArtifactError(f"no runtime evaluates format '{fmt}'; known formats: {', '.join(RUNTIMES)}")
    module, _, cls = RUNTIMES[fmt].partition(":")
    return getattr(import_module(module), cls)()


__all__ = ["RUNTIMES", "BaseFolder", "DomainScores", "EvaluationSettings", "Runtime", "ScoredTarget", "runtime_for"]
