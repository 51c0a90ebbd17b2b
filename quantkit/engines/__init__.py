"""Engine registry: recipe `method` -> the engine that produces it.

A new method family is one engine module plus one line here (and its output model in
quantkit.recipe); a new llm-compressor method is one row of `engines.llmcompressor.METHODS`.
"""

from __future__ import annotations

from quantkit.engines.base import Engine, EngineJob, EngineResult
from quantkit.engines.gguf import GGUFEngine
from quantkit.engines.llmcompressor import LLMCompressorEngine

ENGINES: dict[str, Engine] = {method: engine for engine in (LLMCompressorEngine(), GGUFEngine()) for method in engine.methods}


def engine_for(method: str) -> Engine:
    try:
        return ENGINES[method]
    except KeyError:
        raise KeyError(f"no engine for method '{method}'; registered: {', '.join(sorted(ENGINES))}") from None


__all__ = ["ENGINES", "Engine", "EngineJob", "EngineResult", "engine_for"]
