"""Sizes from a model's config.json alone (no weights, no torch): its parameter counts, and the bytes
each output writes. `quantkit plan`, quantize's disk-space preflight and the matrix planner all size
artifacts here, so they agree.

An artifact is what quantkit writes for one output:
- compressed-tensors (awq, gptq, int8, fp8, rtn): the targeted Linear layers at the scheme's bits plus
  one scale (in the model's dtype) per group, channel, block or tensor, and a packed zero point per scale
  for asymmetric schemes; everything untargeted (embeddings, an untied `lm_head` left in `ignore`, the
  norms) in the dtype the model was loaded in (`model.dtype`: save_pretrained writes what it holds);
  the tokenizer and config files.
- GGUF: one file per type, each tensor at the type llama-quantize gives it: the type's own, the
  fallback a K- or i-quant takes on a row width its 256-wide blocks do not divide, and llama.cpp's rules
  for `token_embd` and `output`; the tokenizer in each file's metadata; the importance matrix.
The figures are checked against real artifacts in tests/test_estimates_and_matrix.py (within 15% on
the tiny Llama, within 3% of README.md's SmolLM2 sizes: about 1% measured); docs/scaling.md has the formulas.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from quantkit.errors import QuantkitError
from quantkit.formats.gguf import EMBD_TYPE, GGML_FALLBACK, GGML_TYPES, GGUF_FILE_TYPES, LOW_IQ
from quantkit.formats.gguf_names import GGUF_PROJ as _GGUF_PROJ

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# tokenizer.json (or vocab + merges) in a checkpoint, and the token table in a GGUF's metadata: about
# 36 bytes per token on byte-level BPE tokenizers (SmolLM2: 1.76 MB for 49,152 tokens)
TOKENIZER_BYTES_PER_TOKEN = 36
CONFIG_FILES_BYTES = 4096  # config.json, generation_config.json, recipe.yaml


@dataclass(frozen=True)
class LinearLayer:
    """One Linear module (or the experts of one MoE projection, stored together in a GGUF)."""

    name: str  # module name as transformers builds it: what `targets` and `ignore` match
    gguf_name: str  # tensor name in a GGUF file: what `tensor_types` regexes match
    in_features: int
    out_features: int
    copies: int = 1  # experts of an MoE projection (named by expert 0)

    @property
    def params(self) -> int:
        return self.in_features * self.out_features * self.copies


@dataclass(frozen=True)
class ModelShape:
    """Parameter counts of a decoder-only transformer, from its config."""

    params: int
    layer_params: int  # the largest decoder layer
    embedding_params: int  # input embeddings plus an untied output head
    hidden: int
    layers: int
    linear_inputs: tuple[int, ...]  # in_features of the linear layers of one decoder layer
    vocab: int
    tied: bool  # lm_head shares the input embeddings (stored once)
    linears: tuple[LinearLayer, ...]  # every Linear module: the decoder layers', and lm_head when untied
    norm_params: int  # 1-D tensors (norms), kept in float by every format


def shape_from_config(config: dict) -> ModelShape:
    """Llama-family arithmetic (attention with grouped KV heads, gated MLP, optional MoE experts); a
    config without these fields is refused rather than guessed."""
    def field(*names: str, default=None):
        for n in names:
            if isinstance(config.get(n), int):
                return config[n]
        if default is not None:
            return default
        raise QuantkitError(f"config.json has no {' or '.join(names)}: cannot estimate this model's memory")

    text = config.get("text_config")
    if isinstance(text, dict) and "hidden_size" not in config:
        config = text
    h = field("hidden_size", "n_embd", "d_model")
    layers = field("num_hidden_layers", "n_layer", "num_layers")
    heads = field("num_attention_heads", "n_head")
    kv_heads = field("num_key_value_heads", default=heads)
    head_dim = field("head_dim", default=h // heads)
    inter = field("intermediate_size", "ffn_dim", default=4 * h)
    vocab = field("vocab_size")
    experts = field("num_local_experts", "n_routed_experts", "num_experts", default=1)
    expert_inter = field("moe_intermediate_size", default=inter) if experts > 1 else inter
    tied = bool(config.get("tie_word_embeddings", False))

    def layer_linears(i: int) -> list[LinearLayer]:
        p = f"model.layers.{i}"
        found = [LinearLayer(f"{p}.self_attn.{n}", f"blk.{i}.{_GGUF_PROJ[n]}.weight", a, b)
                 for n, a, b in (("q_proj", h, heads * head_dim), ("k_proj", h, kv_heads * head_dim),
                                 ("v_proj", h, kv_heads * head_dim), ("o_proj", heads * head_dim, h))]
        mlp = (("gate_proj", h, expert_inter), ("up_proj", h, expert_inter), ("down_proj", expert_inter, h))
        if experts > 1:
            found.append(LinearLayer(f"{p}.mlp.gate", f"blk.{i}.ffn_gate_inp.weight", h, experts))
            found += [LinearLayer(f"{p}.mlp.experts.0.{n}", f"blk.{i}.{_GGUF_PROJ[n]}_exps.weight", a, b, experts)
                      for n, a, b in mlp]
        else:
            found += [LinearLayer(f"{p}.mlp.{n}", f"blk.{i}.{_GGUF_PROJ[n]}.weight", a, b) for n, a, b in mlp]
        return found

    linears = [lin for i in range(layers) for lin in layer_linears(i)]
    if not tied:
        linears.append(LinearLayer("lm_head", "output.weight", h, vocab))
    norms = layers * 2 * h + h
    layer = sum(lin.params for lin in layer_linears(0)) + 2 * h
    embedding = vocab * h * (1 if tied else 2)
    inputs = (h, h, h, heads * head_dim, h, h, expert_inter)
    params = vocab * h + sum(lin.params for lin in linears) + norms
    return ModelShape(params, layer, embedding, h, layers, inputs, vocab, tied, tuple(linears), norms)


# ------------------------------------------------------------------ compressed-tensors


def _matches(name: str, patterns: list[str]) -> bool:
    """compressed-tensors' matching for a Linear module: its class name, its exact name, or `re:` + a
    regex matched from the start of the name."""
    return any(p == "Linear" or p == name or (p.startswith("re:") and re.match(p[3:], name)) for p in patterns)


def targeted(shape: ModelShape, output) -> list[LinearLayer]:
    """The Linear layers an output quantizes (its `targets`, less its `ignore`)."""
    return [lin for lin in shape.linears if _matches(lin.name, output.targets) and not _matches(lin.name, output.ignore)]


def _scales(lin: LinearLayer, args: dict) -> int:
    """Scales (and zero points) of one quantized weight: one per group, output channel, block or tensor."""
    strategy = args["strategy"]
    if strategy == "group":
        per_copy = lin.out_features * math.ceil(lin.in_features / args["group_size"])
    elif strategy == "channel":
        per_copy = lin.out_features
    elif strategy == "block":
        rows, cols = args["block_structure"]
        per_copy = math.ceil(lin.out_features / rows) * math.ceil(lin.in_features / cols)
    else:  # tensor
        per_copy = 1
    return per_copy * lin.copies


def compressed_tensors_bytes(shape: ModelShape, output, dtype: str) -> int:
    """A compressed-tensors checkpoint of `output` made from the model loaded in `dtype`."""
    from quantkit.engines.llmcompressor_schemes import scheme_summary  # the preset table: no torch import

    weights, activations = scheme_summary(output)
    float_bytes = DTYPE_BYTES[dtype]
    quantized = targeted(shape, output)
    total = 0
    for lin in quantized:
        n_scales = _scales(lin, weights)
        total += math.ceil(lin.params * weights["num_bits"] / 8) + n_scales * float_bytes
        if not weights["symmetric"]:
            total += math.ceil(n_scales * weights["num_bits"] / 8)  # zero points, packed like the weights
        if activations is not None and not activations["dynamic"]:
            total += float_bytes  # a static input scale per layer
    unquantized = shape.params - sum(lin.params for lin in quantized)  # embeddings, norms, ignored layers
    return total + unquantized * float_bytes + shape.vocab * TOKENIZER_BYTES_PER_TOKEN + CONFIG_FILES_BYTES


# ------------------------------------------------------------------ GGUF

GGUF_TENSOR_HEADER_BYTES = 96  # name, shape, type and offset of one tensor in the file's header


def _fitted(ggml_type: str, width: int) -> str:
    # a 32-wide type on a width it does not divide: llama-quantize refuses the tensor; sized as q8_0 here
    return GGML_FALLBACK.get(ggml_type, "q8_0") if width % GGML_TYPES[ggml_type][1] else ggml_type


def _tensor_bits(name: str, width: int, default: str, output) -> float:
    """Bits per weight llama-quantize gives a 2-D tensor named `name` with rows of `width`, in file type `default`."""
    for pattern, forced in output.tensor_types.items():  # --tensor-type wins over the rules below
        if re.search(pattern, name):
            return GGML_TYPES[_fitted(forced, width)][0]
    base, mix_bits = GGUF_FILE_TYPES[default]
    if GGML_TYPES[base][1] == 1:  # F32, F16, BF16: no quantization mix
        return GGML_TYPES[base][0]
    if name == "output.weight":
        if output.output_tensor_type:
            kind = output.output_tensor_type
        elif width % GGML_TYPES[base][1]:
            kind = "q8_0"
        else:
            kind = "q5_k" if default in LOW_IQ else base if base == "q8_0" else "q6_k"
        return GGML_TYPES[_fitted(kind, width)][0]
    if name == "token_embd.weight":
        kind = output.token_embedding_type or EMBD_TYPE.get(default, base)
        return GGML_TYPES[_fitted(kind, width)][0]
    fitted = _fitted(base, width)
    return mix_bits if fitted == base and mix_bits else GGML_TYPES[fitted][0]


def gguf_file_bytes(shape: ModelShape, output, file_type: str) -> int:
    """One .gguf file of `output` in `file_type`."""
    bits = shape.vocab * shape.hidden * (
        # tied: token_embd is also the output, and llama-quantize types it as the output
        _tensor_bits("output.weight" if shape.tied else "token_embd.weight", shape.hidden, file_type, output))
    for lin in shape.linears:
        if lin.gguf_name.endswith("ffn_gate_inp.weight"):  # the MoE router stays f32
            bits += lin.params * 32
        else:
            bits += lin.params * _tensor_bits(lin.gguf_name, lin.in_features, file_type, output)
    tensors = len(shape.linears) + 1 + 2 * shape.layers + 1
    return int(bits / 8) + shape.norm_params * 4 + shape.vocab * TOKENIZER_BYTES_PER_TOKEN + tensors * GGUF_TENSOR_HEADER_BYTES


def imatrix_bytes(shape: ModelShape) -> int:
    """llama-imatrix's file: a float32 sum of squared activations per input column of each quantized layer."""
    layers = [lin for lin in shape.linears if lin.name != "lm_head"]
    return sum(4 * lin.in_features * lin.copies + 2 * GGUF_TENSOR_HEADER_BYTES for lin in layers)


def gguf_base_bytes(shape: ModelShape, base_type: str) -> int:
    """The converted GGUF every type is quantized from (in quantkit's cache, once per model)."""
    bits = GGML_TYPES[base_type.lower()][0]
    return int((shape.params - shape.norm_params) * bits / 8) + shape.norm_params * 4 + shape.vocab * TOKENIZER_BYTES_PER_TOKEN


# ------------------------------------------------------------------ one output


def gguf_artifact_bytes(shape: ModelShape, output, dtype: str) -> int:
    files = sum(gguf_file_bytes(shape, output, t) for t in output.types)
    return files + (imatrix_bytes(shape) if output.imatrix else 0)


# format (quantkit.formats) -> the arithmetic of one output's artifact
ARTIFACT_SIZERS = {"compressed-tensors": compressed_tensors_bytes, "gguf": gguf_artifact_bytes}


def artifact_bytes(shape: ModelShape, output, dtype: str) -> int:
    """What `output` writes into its artifact folder, for a model loaded in `dtype`."""
    if output.format not in ARTIFACT_SIZERS:
        raise QuantkitError(f"no size arithmetic for format {output.format!r}; known: {', '.join(ARTIFACT_SIZERS)}")
    return ARTIFACT_SIZERS[output.format](shape, output, dtype)


def coarse_artifact_bytes(output, weight_bytes: int, dtype: str) -> int:
    """For a model whose config.json the arithmetic above does not know: every parameter at the
    output's bits (GGUF: each type's), plus 10% for scales, from the float weights' size."""
    params = weight_bytes / DTYPE_BYTES[dtype]
    return int(params * output.disk_bits() / 8 * 1.1)


def disk_need(output, config: dict | None, dtype: str, weight_bytes: int) -> tuple[int, str]:
    """Bytes the output's artifact needs and what they were estimated from: the config when the
    arithmetic knows its fields, else (coarsely) the float weights' size."""
    if config is not None:
        try:
            shape = shape_from_config(config)
        except QuantkitError:
            shape = None  # not the Llama fields: the coarse figure, and the caller names it
        if shape is not None:
            return artifact_bytes(shape, output, dtype), "config.json and the schemes"
    return coarse_artifact_bytes(output, weight_bytes, dtype), "the float weights' size and the schemes"
