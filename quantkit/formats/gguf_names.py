"""llama.cpp's tensor names against the HF names its converter read: an exact map for the Llama family's
tensors (Llama, Mistral, Qwen2/3, their MoE experts stacked into one tensor per projection), and, for what the
map does not name (another architecture's norms), each layer's remaining tensors compared by count and shape."""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from pathlib import Path

from quantkit.formats.tensors import Accounted, BaseTensor, CheckpointTensor, TensorMap, problem_lines

# HF projection names -> llama.cpp's (convert_hf_to_gguf.py's tensor map)
GGUF_PROJ = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    **{f"self_attn.{hf}.{leaf}": f"{cpp}.{leaf}" for hf, cpp in GGUF_PROJ.items() if hf[0] in "qkvo"
       for leaf in ("weight", "bias")},
    **{f"mlp.{hf}.weight": f"{cpp}.weight" for hf, cpp in GGUF_PROJ.items() if hf[0] not in "qkvo"},
}
EXPERT = re.compile(r"mlp\.experts\.\d+\.(gate_proj|up_proj|down_proj)\.weight")  # stacked: ffn_*_exps
LAYER = re.compile(r"^(?:model\.layers|blk)\.(\d+)\.(.+)$")
# tensors llama.cpp's converter adds that no base tensor holds
ADDED = {"rope_freqs.weight": "rope frequency factors the converter computes from config.json's rope_scaling"}
FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def gguf_name(hf: str) -> str | None:
    """The llama.cpp name of an HF tensor (experts: the stacked tensor), None where the map has none."""
    if hf in TOP_NAMES:
        return TOP_NAMES[hf]
    m = LAYER.match(hf)
    if not m:
        return None
    layer, rest = m.groups()
    expert = EXPERT.fullmatch(rest)
    if expert:
        return f"blk.{layer}.{GGUF_PROJ[expert.group(1)]}_exps.weight"
    return f"blk.{layer}.{LAYER_NAMES[rest]}" if rest in LAYER_NAMES else None


def map_gguf_tensors(base: list[BaseTensor], tensors: list[CheckpointTensor]) -> TensorMap:
    by_name = {t.name: t for t in tensors}
    groups: dict[str, list[BaseTensor]] = defaultdict(list)
    unmapped: list[BaseTensor] = []
    for b in base:
        name = gguf_name(b.name)
        (groups[name] if name in by_name else unmapped).append(b)
    accounted, wrong_shape, claimed = [], [], set()
    for name, members in groups.items():
        t = by_name[name]
        claimed.add(name)
        want = members[0].shape if len(members) == 1 else (len(members), *members[0].shape)
        if t.shape != want:
            wrong_shape.append(f"{name} {list(t.shape)} (the base's {members[0].name}"
                               f"{f' and {len(members) - 1} more' if len(members) > 1 else ''} make {list(want)})")
            continue
        accounted += [_accounted(b, t, t.size * b.numel // max(t.numel, 1)) for b in members]
    for name, why in ADDED.items():
        if name in by_name:
            claimed.add(name)
            t = by_name[name]
            accounted.append(Accounted(name, "converter", "added", t.dtype, t.numel, t.size, why))
    left = [t for t in tensors if t.name not in claimed]
    found, missing, extra = _by_layer_shapes(unmapped, left)
    accounted += [_accounted(b, t, t.size) for b, t in found]
    mapping = "llama.cpp names" + (f"; {len(found)} by per-layer count and shape" if found else "")
    return TensorMap(accounted, problem_lines(missing, extra, wrong_shape, []), mapping)


def _accounted(b: BaseTensor, t: CheckpointTensor, size: int) -> Accounted:
    if t.dtype in FLOAT_TYPES:
        return Accounted(b.name, b.kind, "kept", t.dtype, b.numel, size, f"llama.cpp keeps it in {t.dtype}")
    return Accounted(b.name, b.kind, "quantized", t.dtype, b.numel, size)


def _by_layer_shapes(base: list[BaseTensor], tensors: list[CheckpointTensor]):
    """Pairs the unmapped base tensors with the unclaimed GGUF tensors of the same layer (none: outside the
    layers) by shape; what has no partner of its shape is missing (base) or extra (GGUF)."""
    def layer(name: str) -> str | None:
        m = LAYER.match(name)
        return m.group(1) if m else None

    pool: dict[tuple, list[CheckpointTensor]] = defaultdict(list)
    for t in sorted(tensors, key=lambda t: t.name):
        pool[(layer(t.name), t.shape)].append(t)
    found, missing = [], []
    for b in sorted(base, key=lambda b: b.name):
        partners = pool.get((layer(b.name), b.shape))
        if partners:
            found.append((b, partners.pop(0)))
        else:
            missing.append(b.name)
    extra = sorted(t.name for ts in pool.values() for t in ts)
    return found, missing, extra


# GGUF metadata value types (gguf-py's GGUFValueType) -> their fixed size; 8 is a string, 9 an array
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def read_gguf_tensors(path: Path) -> list[CheckpointTensor]:
    """A GGUF file's tensor infos (name, ggml type, shape in torch's order, bytes), skipping the metadata
    values unparsed: gguf-py's GGUFReader builds an array per tokenizer entry (2.6 s on a 49k vocabulary)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as f:
        def unpack(fmt: str):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def skip_value(kind: int) -> None:
            if kind == 8:
                f.seek(unpack("Q")[0], 1)
            elif kind == 9:
                item, count = unpack("IQ")
                if item in _SCALAR_BYTES:
                    f.seek(_SCALAR_BYTES[item] * count, 1)
                else:
                    for _ in range(count):
                        skip_value(item)
            else:
                f.seek(_SCALAR_BYTES[kind], 1)

        def string() -> str:
            return f.read(unpack("Q")[0]).decode("utf-8")

        if f.read(4) != b"GGUF":
            raise ValueError("no GGUF magic")
        _version, n_tensors, n_kv = unpack("IQQ")
        for _ in range(n_kv):
            f.seek(unpack("Q")[0], 1)  # the key
            skip_value(unpack("I")[0])
        out = []
        for _ in range(n_tensors):
            name = string()
            dims = unpack(f"{unpack('I')[0]}Q")
            kind, _offset = unpack("IQ")
            ggml = GGMLQuantizationType(kind)
            block, block_bytes = GGML_QUANT_SIZES[ggml]
            numel = 1
            for d in dims:
                numel *= d
            out.append(CheckpointTensor(name, Path(path), ggml.name, tuple(int(d) for d in reversed(dims)),
                                        numel // block * block_bytes))
    return out
