"""compressed-tensors: a transformers checkpoint folder whose config carries a `quantization_config`
(llm-compressor writes it; vLLM and transformers read it natively)."""

from __future__ import annotations

import re

from quantkit.formats.base import Format, Target


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
