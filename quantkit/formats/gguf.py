"""GGUF: one llama.cpp file per type, each a whole model, plus the importance matrix that made them.

The ggml type table (bits per weight and block width of every tensor type llama-quantize writes, the
fallbacks it takes, each file type's base tensor type and mix) lives here: sizes (quantkit.estimates),
precision classes and the card ask this module."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantkit.errors import ArtifactError
from quantkit.files import human_bytes
from quantkit.formats.base import Format, Target
from quantkit.formats.gguf_names import map_gguf_tensors, read_gguf_tensors
from quantkit.formats.tensors import BaseTensor, CheckpointTensor, TensorMap

# ggml tensor types: bits per weight and block width (a row's length must be a multiple of it); ggml.c's type_traits
GGML_TYPES = {
    "f32": (32.0, 1), "f16": (16.0, 1), "bf16": (16.0, 1), "q8_0": (8.5, 32), "q6_k": (6.5625, 256),
    "q5_k": (5.5, 256), "q5_1": (6.0, 32), "q5_0": (5.5, 32), "q4_k": (4.5, 256), "q4_1": (5.0, 32),
    "q4_0": (4.5, 32), "q3_k": (3.4375, 256), "q2_k": (2.625, 256), "iq4_xs": (4.25, 256), "iq4_nl": (4.5, 32),
    "iq3_s": (3.4375, 256), "iq3_xxs": (3.0625, 256), "iq2_s": (2.5625, 256), "iq2_xs": (2.3125, 256),
    "iq2_xxs": (2.0625, 256), "iq1_m": (1.75, 256), "iq1_s": (1.5625, 256), "tq1_0": (1.6875, 256),
    "tq2_0": (2.0625, 256),
}
# what llama-quantize writes instead on a row width the type's blocks do not divide (llama-quant.cpp)
GGML_FALLBACK = {"q6_k": "q8_0", "q5_k": "q5_1", "q4_k": "q5_0", "tq1_0": "q4_0", "tq2_0": "q4_0",
                 **{t: "iq4_nl" for t in ("q3_k", "q2_k", "iq4_xs", "iq3_s", "iq3_xxs", "iq2_s", "iq2_xs",
                                          "iq2_xxs", "iq1_m", "iq1_s")}}
# file type -> (its base tensor type, the mix's average bits per weight over the layers' tensors when the
# mix gives some of them (attn_v, ffn_down) more bits, as llama.cpp reports them on Llama models)
GGUF_FILE_TYPES: dict[str, tuple[str, float | None]] = {
    "F32": ("f32", None), "F16": ("f16", None), "BF16": ("bf16", None), "Q8_0": ("q8_0", None),
    "Q6_K": ("q6_k", None), "Q5_K_M": ("q5_k", 5.7), "Q5_K_S": ("q5_k", None), "Q5_1": ("q5_1", None),
    "Q5_0": ("q5_0", None), "Q4_K_M": ("q4_k", 4.9), "Q4_K_S": ("q4_k", 4.6), "Q4_1": ("q4_1", None),
    "Q4_0": ("q4_0", None), "Q3_K_L": ("q3_k", 4.3), "Q3_K_M": ("q3_k", 3.9), "Q3_K_S": ("q3_k", 3.5),
    "Q2_K": ("q2_k", 3.4), "Q2_K_S": ("q2_k", 3.0), "IQ4_XS": ("iq4_xs", None), "IQ4_NL": ("iq4_nl", None),
    "IQ3_M": ("iq3_s", 3.66), "IQ3_S": ("iq3_s", None), "IQ3_XS": ("iq3_s", 3.3), "IQ3_XXS": ("iq3_xxs", None),
    "IQ2_M": ("iq2_s", 2.7), "IQ2_S": ("iq2_xs", 2.5), "IQ2_XS": ("iq2_xs", None), "IQ2_XXS": ("iq2_xxs", None),
    "IQ1_M": ("iq1_m", None), "IQ1_S": ("iq1_s", None), "TQ1_0": ("tq1_0", None), "TQ2_0": ("tq2_0", None),
}
LOW_IQ = ("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")  # their output tensor: q5_k
EMBD_TYPE = {"IQ2_XXS": "q2_k", "IQ2_XS": "q2_k", "IQ1_S": "q2_k", "IQ1_M": "q2_k", "IQ3_XXS": "iq3_s",
             "IQ3_XS": "iq3_s", "TQ1_0": "q4_k", "TQ2_0": "q4_k"}
IMATRIX_PREFIX = "imatrix"  # llama.cpp's importance matrix (and, in older artifacts, its calibration text)


def file_type_bits(file_type: str) -> float:
    """Average bits per weight of a file type (its mix where llama.cpp gives one, else its base type's)."""
    base, mix = GGUF_FILE_TYPES[file_type]
    return mix or GGML_TYPES[base][0]


def type_class_bits(file_type: str) -> int:
    """The precision class of a file type: F32/F16/BF16 are 16, Q8_0 is 8, the others the digit of
    their name (Q4_K_M 4, IQ2_XXS 2, TQ1_0 1 rounds to the 2-bit class)."""
    s = file_type.upper()
    if s in ("F32", "F16", "BF16"):
        return 16
    m = re.match(r"^(?:Q|IQ|TQ)(\d)", s)
    return int(m.group(1)) if m else 4


class GGUFTypeRecord(BaseModel):
    """One file llama-quantize wrote, as the engine recorded it."""

    model_config = ConfigDict(extra="allow")
    file: str
    bytes: int
    bpw: float | None = None  # llama-quantize's own bits per weight


class GGUFRecord(BaseModel):
    """The GGUF engine's record in a manifest (`engine`)."""

    model_config = ConfigDict(extra="allow")
    types: dict[str, GGUFTypeRecord] = Field(default_factory=dict)
    toolchain: dict | None = None
    llama_cpp: dict | str | None = None  # manifests of an older quantkit


def engine_record(manifest) -> GGUFRecord:
    try:
        return GGUFRecord.model_validate(manifest.engine or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ArtifactError(f"manifest field engine.{where} is not what the GGUF engine writes: {first['msg']}") from None


class GGUF(Format):
    name = "gguf"
    runtimes = ("llama.cpp",)  # quantkit.runtimes.llamacpp
    vllm_quantization = "gguf"
    serve_only_when_asked = "GGUF is served by llama.cpp; try it in vLLM with --serve"
    lm_eval_unsupported = ("no server returns correct prompt log-probabilities (llama-server has none; "
                           "llama-cpp-python's are shifted; docs/decisions.md)")
    transformers_reference = False  # transformers would dequantize it: not what llama.cpp or vLLM run
    library_name = "gguf"
    tags = ("gguf", "llama-cpp")
    oci_format = "gguf"
    several_models = True

    def targets(self, manifest, folder: Path) -> list[Target]:
        written = engine_record(manifest).types
        return [Target(f"{manifest.name}/{q}", folder / written[q].file, self.name, manifest.method, q, written[q].bytes,
                       self.nominal_bits(q))
                for q in manifest.output.get("types", []) if q in written]

    def nominal_bits(self, scheme: str, bits: int | None = None) -> int:
        return bits or type_class_bits(scheme)

    def file_role(self, rel: str) -> str | None:
        return "config" if rel.startswith(IMATRIX_PREFIX) else None  # how the weights were made

    def artifact_tensors(self, target: Target) -> list[CheckpointTensor]:
        try:
            return read_gguf_tensors(target.path)
        except (OSError, ValueError, KeyError, struct.error, UnicodeDecodeError, RecursionError) as e:
            raise ArtifactError(f"{target.path} is not a readable GGUF file ({type(e).__name__}: {str(e)[:160]})") from None

    def map_tensors(self, base: list[BaseTensor], tensors: list[CheckpointTensor], output) -> TensorMap:
        return map_gguf_tensors(base, tensors)

    def size_lines(self, manifest, targets: list[Target]) -> list[str]:
        # each GGUF file is a whole model: the folder's total (every type, the importance matrix) is no model's size
        float_bytes = manifest.base_model.weight_bytes
        out = [f"{len(manifest.files)} files, {human_bytes(manifest.size_bytes)} in all; each GGUF type against the "
               f"float base ({human_bytes(float_bytes)}):"]
        for t in targets:
            out.append(f"  {t.scheme}: {t.path.name}, {human_bytes(t.bytes)}"
                       + (f", {float_bytes / t.bytes:.2f}x smaller" if t.bytes else ""))
        return out

    def ratio_text(self, manifest, targets: list[Target]) -> str:
        ratios = sorted(manifest.base_model.weight_bytes / t.bytes for t in targets if t.bytes)
        if ratios:  # several files, each a full model: the ratio of each file is what matters
            return f"{ratios[0]:.2f}–{ratios[-1]:.2f}x/file"
        return super().ratio_text(manifest, targets)

    def card_files(self, manifest, targets: list[Target], mean_kld: Callable[[str], float | None]) -> list[str]:
        written = engine_record(manifest).types  # llama-quantize's own bits per weight, recorded by quantize
        out = ["## Files", "", "One GGUF file per type; pick one.", "",
               "| file | type | size | bits per weight | mean KLD to the base |", "|---|---|---:|---:|---:|"]
        for t in targets:
            rec = written.get(t.scheme)
            out.append(f"| `{t.path.name}` | {t.scheme} | {human_bytes(t.bytes)} | {_f(rec.bpw if rec else None, 2)} | "
                       f"{_f(mean_kld(t.scheme), 5)} |")
        return out + [""]

    def run_snippets(self, targets: list[Target], where: str, pulled: bool) -> list[str]:
        out = []
        for t in targets:
            if pulled:
                out += [f"{t.scheme}:", "", "```bash", f"llama-server -m {where}/{t.path.name}", "```", ""]
            else:
                out += [f"{t.scheme}:", "", "```bash", f"llama-server -hf {where}:{t.scheme}",
                        f"ollama run hf.co/{where}:{t.scheme}", "```", ""]
        return out

    def toolchain(self, manifest) -> tuple[str, str] | None:
        rec = engine_record(manifest)
        found = rec.toolchain or rec.llama_cpp
        if not found:
            return None
        return "llama.cpp", str(found.get("version") or found.get("commit") or found) if isinstance(found, dict) else str(found)


def _f(v, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"
