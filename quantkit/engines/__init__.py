"""Engine registry: recipe `method` -> the engine that produces it.

A new method is one engine module plus one line here (and its output model in recipe.py).
"""

from __future__ import annotations

from quantkit.engines.base import Engine, EngineJob, EngineResult
from quantkit.engines.gguf import GGUFEngine
from quantkit.engines.llmcompressor import LLMCompressorEngine

_llmcompressor = LLMCompressorEngine()

ENGINES: dict[str, Engine] = {
    "awq": _llmcompressor,
    "gptq": _llmcompressor,
    "int8": _llmcompressor,
    "fp8": _llmcompressor,
    "rtn": _llmcompressor,
    "gguf": GGUFEngine(),
}


def engine_for(method: str) -> Engine:
    try:
        return ENGINES[method]
    except KeyError:
        raise KeyError(f"no engine for method '{method}'; registered: {', '.join(sorted(ENGINES))}") from None


__all__ = ["ENGINES", "Engine", "EngineJob", "EngineResult", "engine_for"]
