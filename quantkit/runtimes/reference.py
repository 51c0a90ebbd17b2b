"""The base model's next-token distributions over the evaluation windows, computed once and stored.

As llama.cpp's `--kl-divergence-base` file does, every scored position keeps the base's full-vocabulary
log-probabilities in 16 bits per entry: a uint16 per entry on a per-row linear scale from the row's
maximum down to at most LOGPROB_RANGE nats below it (a step of 0.0006 nats; probabilities under
e^-40 are clipped to that floor). Rows are renormalised when read, so each stored distribution
sums to one. Each artifact is then scored with one model in memory. Beside them: the base's exact
float32 NLL of the actual next token (base perplexity is not rounded) and its argmax (top-1
agreement is exact). Measured on SmolLM2-135M (docs/decisions.md): float16 rows give mean KLD
within 0.05% of the float32 lockstep value but drift on near-lossless artifacts; bfloat16 rows are
off by up to 0.3%; top-k (k <= 256) plus the remaining mass undercounts KLD by 9-35%.

Files of an entry: `logprobs.u16` ([positions, vocab] little-endian uint16), `scale.f32`
([positions, 2]: floor and step), `nll.f32`, `argmax.i32`, `reference.json` (shape, windows).
Written one window at a time: memory holds one window of logits, never the whole matrix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from quantkit.memory import release_free_heap

REFERENCE_FORMAT = 2
LOGPROB_RANGE = 40.0
ROWS_PER_CHUNK = 32  # rows converted or compared at once: temporaries of 32 x vocabulary floats


def tokens_digest(ids: list[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype="<i4").tobytes()).hexdigest()


def reference_key(base_fingerprint: str, ids: list[int], context: int, stride: int, dtype: str, device_class: str) -> dict:
    """Everything that decides the stored numbers; a change in any gives a different entry."""
    return {"kind": "transformers-base-reference", "format": REFERENCE_FORMAT, "base_fingerprint": base_fingerprint,
            "tokens_sha256": tokens_digest(ids), "n_tokens": len(ids), "context": context, "stride": stride,
            "dtype": dtype, "device_class": device_class, "storage": f"uint16 log-probs per row over {LOGPROB_RANGE} nats"}


def scored_rows(spans: list[tuple[int, int, int]]) -> list[int]:
    """Row offset of each window's first scored position in the stored matrix (plus the total)."""
    offsets = [0]
    for _, end, first in spans:
        offsets.append(offsets[-1] + end - first)
    return offsets


def build_reference(model, ids: list[int], spans: list[tuple[int, int, int]], folder: Path,
                    on_window: Callable[[int], None] = lambda n: None) -> None:
    """Score `ids` with the base `model` (a TransformersModel) window by window and write the entry files."""
    vocab = None
    with open(folder / "logprobs.u16", "wb") as lp_file, open(folder / "scale.f32", "wb") as scale_file, \
            open(folder / "nll.f32", "wb") as nll_file, open(folder / "argmax.i32", "wb") as top_file:
        for begin, end, first in spans:
            window = ids[begin:end]
            lp = model.logprobs(window, keep=end - first + 1)[:-1]  # rows predict tokens first..end-1
            targets = torch.tensor(window[first - begin:], device=lp.device)
            vocab = lp.shape[1]
            for r0 in range(0, lp.shape[0], ROWS_PER_CHUNK):  # a few rows at a time: small temporaries
                codes, scale = quantize_rows(lp[r0:r0 + ROWS_PER_CHUNK])
                lp_file.write(codes.cpu().numpy().astype("<u2"))
                scale_file.write(scale.cpu().numpy().astype("<f4"))
            nll_file.write((-lp.gather(1, targets[:, None])[:, 0]).cpu().numpy().astype("<f4").tobytes())
            top_file.write(lp.argmax(-1).cpu().numpy().astype("<i4").tobytes())
            del lp
            release_free_heap()
            on_window(end - first)
    meta = {"format": REFERENCE_FORMAT, "positions": scored_rows(spans)[-1], "vocab": vocab,
            "windows": [list(s) for s in spans]}
    (folder / "reference.json").write_text(json.dumps(meta) + "\n")


def quantize_rows(lp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint16 codes of log-probabilities [rows, vocab] and each row's (floor, step)."""
    top = lp.max(-1, keepdim=True).values
    floor = torch.maximum(lp.min(-1, keepdim=True).values, top - LOGPROB_RANGE)
    step = ((top - floor) / 65535).clamp_min(1e-12)
    codes = (lp - floor).div_(step).round_().clamp_(0, 65535).to(torch.int32)
    return codes, torch.cat([floor, step], -1)


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The stored log-probabilities, renormalised (what `kl_from_codes` computes with, spelled out)."""
    lp = scale[:, :1] + codes.float() * scale[:, 1:]
    return lp - torch.logsumexp(lp, -1, keepdim=True)  # each row a distribution again


def kl_from_codes(codes: torch.Tensor, scale: torch.Tensor, lp_artifact: torch.Tensor) -> torch.Tensor:
    """KL(base || artifact) per row from stored codes: `dequantize_rows` and the KL sum fused, one exp
    and two temporaries per row block (the stored row's maximum is its top code, 65535)."""
    floor, step = scale[:, :1], scale[:, 1:]
    raw = codes.float().mul_(step).add_(floor)
    top = floor + 65535 * step
    p = (raw - top).exp_()
    total = p.sum(-1, keepdim=True)
    p.div_(total)
    log_norm = top + total.log()  # raw - log_norm is the renormalised log-prob
    return raw.sub_(lp_artifact).mul_(p).sum(-1) - log_norm[:, 0]


@dataclass
class BaseReference:
    """A stored reference, read a few rows at a time with plain file reads: only the rows being
    compared are in memory (a memory map would keep every row read so far resident)."""

    folder: Path

    def __post_init__(self) -> None:
        meta = json.loads((self.folder / "reference.json").read_text())
        self.vocab: int = meta["vocab"]
        self.windows = [tuple(w) for w in meta["windows"]]
        self.offsets = scored_rows(self.windows)
        n = meta["positions"]
        if (self.folder / "logprobs.u16").stat().st_size != n * self.vocab * 2:
            raise ValueError(f"{self.folder}: logprobs.u16 is not {n} x {self.vocab} entries")
        self.scale = np.fromfile(self.folder / "scale.f32", dtype="<f4").reshape(-1, 2)
        self.nll = np.fromfile(self.folder / "nll.f32", dtype="<f4")
        self.argmax = np.fromfile(self.folder / "argmax.i32", dtype="<i4")
        if self.nll.shape[0] != n or self.argmax.shape[0] != n or self.scale.shape[0] != n:
            raise ValueError(f"{self.folder}: reference files disagree on the number of positions")

    def block(self, i: int, r0: int, r1: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """Scored positions r0..r1-1 of window i: (uint16 codes as int32, per-row floor and step, the
        base's NLL of the next token, the base's argmax)."""
        lo, hi = self.offsets[i] + r0, self.offsets[i] + r1
        codes = np.fromfile(self.folder / "logprobs.u16", dtype="<u2", count=(hi - lo) * self.vocab, offset=lo * self.vocab * 2)
        return (torch.from_numpy(codes.astype(np.int32).reshape(hi - lo, self.vocab)).to(device),
                torch.from_numpy(self.scale[lo:hi].copy()).to(device),
                torch.from_numpy(self.nll[lo:hi].copy()), torch.from_numpy(self.argmax[lo:hi].astype(np.int64)))
