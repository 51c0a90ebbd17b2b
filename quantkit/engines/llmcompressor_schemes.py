"""The schemes a recipe can name for llm-compressor, as plain data: compressed-tensors' presets, the
recipe's overrides on them, and their one-line descriptions. Describing or sizing an output (`recipes
validate`, `quantkit plan`, the disk preflight) then needs no compressed-tensors import, which imports
torch (4.5 s here); `resolved_scheme` builds the library's own objects, importing it when called."""

from __future__ import annotations


def with_weight_overrides(weights: dict, output) -> dict:
    """A preset's weight arguments with the output's explicit bits, group size and symmetry."""
    bits, group_size, symmetric = (getattr(output, k, None) for k in ("bits", "group_size", "symmetric"))
    if bits is not None:
        weights["num_bits"] = bits
    if group_size == "channel":
        weights.update(strategy="channel", group_size=None)
    elif isinstance(group_size, int):
        weights.update(strategy="group", group_size=group_size)
    if symmetric is not None:
        weights["symmetric"] = symmetric
    return weights


def resolved_scheme(output):
    """The compressed-tensors QuantizationScheme for an output: its preset plus explicit overrides."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme, preset_name_to_scheme

    scheme = preset_name_to_scheme(output.scheme, list(output.targets))
    weights = with_weight_overrides(scheme.weights.model_dump(), output)
    activations = scheme.input_activations
    if getattr(output, "activations", "dynamic") == "static" and activations is not None:
        # one scale per tensor, observed on the calibration set (what static-scale int8 kernels take)
        activations = QuantizationArgs(
            **{**activations.model_dump(), "strategy": "tensor", "dynamic": False, "observer": "static_minmax"}
        )
    return QuantizationScheme(
        targets=list(output.targets),
        weights=QuantizationArgs(**weights),
        input_activations=activations,
        output_activations=scheme.output_activations,
        format=scheme.format,
    )


# compressed-tensors' presets for the schemes a recipe can name, as plain data: describing an output
# (`recipes validate`) then needs no compressed-tensors import, which imports torch (4.5 s here).
# tests/test_performance.py keeps this equal to the library's presets.
_W_GROUP = {"type": "int", "symmetric": True, "group_size": 128, "strategy": "group", "block_structure": None,
            "dynamic": False}
_FP8_CHANNEL = {"num_bits": 8, "type": "float", "symmetric": True, "group_size": None, "strategy": "channel",
                "block_structure": None, "dynamic": False}
_TOKEN_DYNAMIC = {"num_bits": 8, "symmetric": True, "group_size": None, "strategy": "token", "block_structure": None,
                  "dynamic": True}
SCHEME_PRESETS: dict[str, tuple[dict, dict | None]] = {
    "W4A16": ({**_W_GROUP, "num_bits": 4}, None),
    "W4A16_ASYM": ({**_W_GROUP, "num_bits": 4, "symmetric": False}, None),
    "W8A16": ({**_W_GROUP, "num_bits": 8}, None),
    "W8A8": ({**_W_GROUP, "num_bits": 8, "group_size": None, "strategy": "channel"}, {**_TOKEN_DYNAMIC, "type": "int"}),
    "FP8_DYNAMIC": (_FP8_CHANNEL, {**_TOKEN_DYNAMIC, "type": "float"}),
    "FP8": ({**_FP8_CHANNEL, "strategy": "tensor"}, {**_FP8_CHANNEL, "strategy": "tensor"}),
    "FP8_BLOCK": ({**_FP8_CHANNEL, "strategy": "block", "block_structure": [128, 128]},
                  {**_TOKEN_DYNAMIC, "type": "float", "strategy": "group", "group_size": 128}),
}


def scheme_summary(output) -> tuple[dict, dict | None]:
    """What `resolved_scheme` gives for the weights and input activations (type, bits, strategy, group or
    block, symmetry, dynamic), from the preset table and the same overrides, without compressed-tensors."""
    weights, activations = (dict(x) if x else None for x in SCHEME_PRESETS[output.scheme])
    weights = with_weight_overrides(weights, output)
    if getattr(output, "activations", "dynamic") == "static" and activations is not None:
        activations.update(strategy="tensor", dynamic=False, group_size=None)
    return weights, activations


def describe_args(args: dict | None, role: str) -> str:
    if args is None:
        return f"{role} unquantized"
    kind = "fp" if args["type"] == "float" else "int"
    strategy = args["strategy"]
    if strategy == "group":
        strategy = f"group {args['group_size']}"
    elif strategy == "block":
        strategy = f"block {args['block_structure']}"
    sym = "sym" if args["symmetric"] else "asym"
    dyn = ", dynamic" if args["dynamic"] else (", static" if role == "activations" else "")
    return f"{role} {kind}{args['num_bits']} {sym} per-{strategy}{dyn}"
