"""Tensors as their headers describe them (name, dtype, shape: no data read), and the coverage record: how
every tensor of a base checkpoint is accounted for in an artifact (quantkit.coverage builds it; each
format maps its own tensor names, `Format.coverage`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from quantkit.errors import ModelSourceError

# bytes per element of safetensors' dtype names (and of llama.cpp's float types, by the same names)
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U8": 1, "BOOL": 1}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # safetensors' names; F8_* are quantized formats, not a float source
SHOWN_NAMES = 6  # names listed per kind of problem; the rest are counted


@dataclass(frozen=True)
class CheckpointTensor:
    """One tensor of a safetensors or GGUF file, from its header (GGUF: shape in torch's order, dtype its ggml type)."""

    name: str
    file: Path
    dtype: str  # safetensors' dtype name: F32, BF16, I8, ... (GGUF: Q4_K, F32, ...)
    shape: tuple[int, ...]
    nbytes: int | None = None  # the bytes it takes (None: from dtype and shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def size(self) -> int:
        return self.nbytes if self.nbytes is not None else self.numel * DTYPE_BYTES.get(self.dtype, 4)


def read_checkpoint_headers(files: list[Path]) -> list[CheckpointTensor]:
    """Every tensor's name, dtype and shape from the safetensors headers (no tensor data is read)."""
    from safetensors import safe_open

    tensors = []
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    tensors.append(CheckpointTensor(name, path, piece.get_dtype(), tuple(piece.get_shape())))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError, OSError, ValueError
            detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise ModelSourceError(f"{path} is not a readable safetensors file ({detail})") from None
    return tensors


def shown(names: list[str]) -> str:
    listed = ", ".join(names[:SHOWN_NAMES])
    return listed + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


@dataclass(frozen=True)
class BaseTensor:
    """A tensor of the base checkpoint a format must account for."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kind: str  # the class of the module holding it (Linear, Embedding, LlamaRMSNorm); "?" when unknown

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


Status = Literal["quantized", "kept", "tied", "dropped", "added"]  # added: a tensor only the artifact has, by design


@dataclass(frozen=True)
class Accounted:
    """How one base tensor is in the artifact."""

    name: str
    kind: str
    status: Status
    precision: str  # the scheme or tensor type it is stored in
    params: int
    bytes: int  # the artifact's bytes for it (scales and zero points included)
    reason: str = ""  # why it was kept, tied or dropped


@dataclass(frozen=True)
class TensorMap:
    """A format's answer: each base tensor it was given, as the target holds it, and what does not fit."""

    accounted: list[Accounted]
    problems: list[str]
    mapping: str  # how names were matched (recorded in the coverage table)


class KindCounts(BaseModel):
    quantized: int = 0
    kept: int = 0
    tied: int = 0
    dropped: int = 0
    added: int = 0


class PrecisionTotals(BaseModel):
    tensors: int = 0
    params: int = 0
    bytes: int = 0


class Coverage(BaseModel):
    """Every base tensor of one target, accounted for: counts per module kind and status, parameters and bytes
    per precision, why tensors were kept, tied or dropped, and what could not be accounted for (`problems`)."""

    model_config = ConfigDict(extra="allow")
    mapping: str  # how artifact tensors were matched to the base's (names, or per-layer counts and shapes)
    base_tensors: int
    artifact_tensors: int
    kinds: dict[str, KindCounts] = Field(default_factory=dict)
    precisions: dict[str, PrecisionTotals] = Field(default_factory=dict)
    reasons: dict[str, int] = Field(default_factory=dict)  # reason -> tensors kept, tied or dropped for it
    params: int = 0
    bytes: int = 0
    bits_per_weight: float = 0.0  # the whole model's: 8 x bytes / params
    problems: list[str] = Field(default_factory=list)


def tally(accounted: list[Accounted], artifact_tensors: int, problems: list[str], mapping: str) -> Coverage:
    cov = Coverage(mapping=mapping, base_tensors=sum(a.status != "added" for a in accounted),
                   artifact_tensors=artifact_tensors, problems=problems)
    for a in accounted:
        counts = cov.kinds.setdefault(a.kind, KindCounts())
        setattr(counts, a.status, getattr(counts, a.status) + 1)
        if a.reason:
            cov.reasons[a.reason] = cov.reasons.get(a.reason, 0) + 1
        if a.status in ("tied", "dropped"):
            continue  # stored once elsewhere, or not at all: no parameters of the artifact's own
        totals = cov.precisions.setdefault(a.precision, PrecisionTotals())
        totals.tensors += 1
        totals.params += a.params
        totals.bytes += a.bytes
        cov.params += a.params
        cov.bytes += a.bytes
    cov.bits_per_weight = round(8 * cov.bytes / cov.params, 4) if cov.params else 0.0
    return cov


def problem_lines(missing: list[str], extra: list[str], wrong_shape: list[str], other: list[str]) -> list[str]:
    out = []
    if missing:
        out.append(f"{len(missing)} base tensor(s) missing from the artifact: {shown(missing)}")
    if extra:
        out.append(f"{len(extra)} tensor(s) the base does not have: {shown(extra)}")
    if wrong_shape:
        out.append(f"{len(wrong_shape)} tensor(s) of another shape than the base's: {shown(wrong_shape)}")
    return out + other
