"""compressed-tensors: a transformers checkpoint folder whose config carries a `quantization_config`
(llm-compressor writes it; vLLM and transformers read it natively)."""

from __future__ import annotations

import json
import math
import re

from quantkit.errors import ArtifactError
from quantkit.formats.base import Format, Target
from quantkit.formats.tensors import Accounted, BaseTensor, CheckpointTensor, TensorMap, problem_lines, read_checkpoint_headers

# what llm-compressor writes beside a quantized Linear's weight (compressed-tensors' parameter names): packed
# int4/int8 (`weight_packed` + `weight_shape`), or FP8/INT8 `weight`, with these
COMPANIONS = ("weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx", "weight_global_scale",
              "input_scale", "input_zero_point", "input_global_scale", "output_scale")
QUANTIZED_DTYPES = ("F8_E4M3", "I8")  # a `weight` stored in these is quantized (FP8, W8A8)


def scheme_bits(scheme: str, bits: int | None = None) -> int:
    """Nominal weight bits of a compressed-tensors preset (W4A16 -> 4, W8A8 and FP8* -> 8); a recipe's
    `bits` override wins."""
    if bits:
        return bits
    s = scheme.upper()
    if s.startswith("FP8"):
        return 8
    m = re.match(r"^W(\d+)", s)
    return int(m.group(1)) if m else 4


class CompressedTensors(Format):
    name = "compressed-tensors"
    runtimes = ("transformers",)
    vllm_quantization = "compressed-tensors"
    library_name = "transformers"
    tags = ("compressed-tensors",)
    oci_format = "safetensors"

    def nominal_bits(self, scheme: str, bits: int | None = None) -> int:
        return scheme_bits(scheme, bits)

    def kernel_class(self, quantization_config: dict) -> str | None:
        classes = {_group_class(g) for g in (quantization_config.get("config_groups") or {}).values()}
        return classes.pop() if len(classes) == 1 else None

    def manifest_problems(self, manifest) -> list[str]:
        if manifest.output.get("scheme") not in (None, manifest.scheme):
            return [f"scheme {manifest.scheme!r} differs from output.scheme {manifest.output.get('scheme')!r}"]
        return []

    def artifact_tensors(self, target: Target) -> list[CheckpointTensor]:
        index = target.path / "model.safetensors.index.json"
        if not index.is_file():
            return read_checkpoint_headers(sorted(target.path.glob("*.safetensors")))
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ArtifactError(f"{index} is not a safetensors index (a JSON object with a weight_map): "
                                f"{type(e).__name__}") from None
        if any(not isinstance(s, str) or "/" in s or s.startswith(".") for s in shards):
            raise ArtifactError(f"{index} names a shard outside the artifact folder")
        return read_checkpoint_headers([target.path / s for s in shards])

    def map_tensors(self, base: list[BaseTensor], tensors: list[CheckpointTensor], output) -> TensorMap:
        """Names are the base's (llm-compressor saves the model's own state dict): `X.weight` is quantized as
        `X.weight_packed` (its packed width from the scheme's bits) or as an FP8/INT8 `X.weight`, each with its
        COMPANIONS, or kept in float under the same name and shape. A weight `targets` selects and no `ignore`
        rule keeps must be quantized (else the engine skipped it), and one they keep must not be."""
        by_name = {t.name: t for t in tensors}
        bits = self.nominal_bits(output.scheme, getattr(output, "bits", None))
        claimed: set[str] = set()
        accounted, missing, wrong_shape, other = [], [], [], []
        for b in base:
            module, _, leaf = b.name.rpartition(".")
            kept_by = _rule(module, b.kind, output.ignore)
            targeted = leaf == "weight" and kept_by is None and _rule(module, b.kind, output.targets) is not None
            packed = by_name.get(f"{module}.weight_packed") if leaf == "weight" else None
            stored = packed or by_name.get(b.name)
            if stored is None:
                missing.append(b.name)
                continue
            parts = [stored] + ([by_name[f"{module}.{c}"] for c in COMPANIONS if f"{module}.{c}" in by_name]
                                if leaf == "weight" else [])
            claimed.update(t.name for t in parts)
            want = (b.shape[0], math.ceil(b.shape[1] * bits / 32)) if packed is not None and len(b.shape) == 2 else b.shape
            if stored.shape != want:
                packs = f" packs to {list(want)}" if packed is not None else ""
                wrong_shape.append(f"{stored.name} {list(stored.shape)} (the base's {b.name} is {list(b.shape)}{packs})")
                continue
            quantized = packed is not None or stored.dtype in QUANTIZED_DTYPES
            if quantized and f"{module}.weight_scale" not in by_name:
                other.append(f"{b.name} is quantized but the artifact has no {module}.weight_scale")
            if b.kind != "?" and quantized != targeted:
                other.append(f"{b.name} is stored in {stored.dtype}, not quantized, though `targets` select it and no "
                             "`ignore` rule keeps it (the engine skipped it)" if targeted else
                             f"{b.name} is quantized though " + (f"`ignore` rule {kept_by!r} keeps it" if kept_by
                                                                 else "`targets` do not select it"))
            reason = "" if quantized else (f"ignore: {kept_by}" if kept_by else
                                           f"not targeted ({b.kind})" if leaf == "weight" else f"{leaf} (kept in float)")
            accounted.append(Accounted(b.name, b.kind, "quantized" if quantized else "kept",
                                       output.scheme if quantized else stored.dtype, b.numel, sum(t.size for t in parts),
                                       reason))
        extra = sorted(set(by_name) - claimed)
        return TensorMap(accounted, problem_lines(missing, extra, wrong_shape, other), "names")

    def run_snippets(self, targets: list[Target], where: str, pulled: bool) -> list[str]:
        return [
            "vLLM (reads the compressed-tensors format natively):", "",
            "```bash", f"vllm serve {where}", "```", "",
            "transformers (with `compressed-tensors` installed):", "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
            f'model = AutoModelForCausalLM.from_pretrained("{where}", device_map="auto")',
            "```", "",
        ]


def _rule(module: str, kind: str, patterns: list[str]) -> str | None:
    """The first of `patterns` that matches a module, as compressed-tensors matches `targets` and `ignore`: its
    class name, its exact name, or `re:` + a regex matched from the start of its name."""
    for p in patterns:
        if p == kind or p == module or (p.startswith("re:") and re.match(p[3:], module)):
            return p
    return None


def _group_class(group: dict) -> str | None:
    weights, inputs = group.get("weights") or {}, group.get("input_activations")
    bits, kind = weights.get("num_bits"), weights.get("type")
    if kind == "float" and bits == 8:
        return "FP8"
    if kind != "int":
        return None
    if inputs is None:
        return {4: "W4A16", 8: "W8A16"}.get(bits)
    if bits == 8 and inputs.get("type") == "int" and inputs.get("num_bits") == 8:
        return "W8A8"
    return None
