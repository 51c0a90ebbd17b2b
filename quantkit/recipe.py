"""Recipes: the typed, declarative description of a quantization run.

A recipe names one model, one calibration set and a list of outputs. Everything is
validated here, before any model is loaded, and every problem is reported with its
field path, its line in the YAML file and the values that would be accepted.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from quantkit.errors import RecipeError

SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSpec(_Strict):
    """Where the unquantized model comes from."""

    source: str = Field(
        description=(
            "A built-in model name (`smollm2-135m`), a local Hugging Face folder, a `.gguf` file "
            "(dequantized to float), or a hub id `org/name` (read from the local HF cache when offline)."
        ),
        min_length=1,
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit); hub ids only.")
    trust_remote_code: bool = Field(False, description="Run modelling code shipped with the checkpoint.")
    allow_pickle: bool = Field(
        False, description="Also read pickled weights (`*.bin`, `*.pt`); by default only safetensors are read."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Precision the float model is loaded in before quantization."
    )


class CalibrationSpec(_Strict):
    """The calibration set: tokenized once, fingerprinted, shared by every output of the recipe."""

    source: str = Field(
        "builtin:mixed",
        description=(
            "`builtin:NAME` (see `calibration/`), a local `.jsonl`/`.json`/`.txt`/`.parquet` file, "
            "or `hf:DATASET_ID` loaded with `datasets.load_dataset`."
        ),
    )
    split: str = Field("train", description="Split of a `hf:` dataset.")
    subset: str | None = Field(None, description="Configuration name of a `hf:` dataset.")
    text_field: str = Field("text", description="Field holding the text in JSONL/parquet/hub rows.")
    num_samples: int = Field(64, ge=1, le=100_000, description="Number of calibration sequences.")
    seq_len: int = Field(256, ge=8, le=131_072, description="Tokens per calibration sequence.")
    chat_template: bool = Field(False, description="Wrap each text in the tokenizer's chat template as a user turn.")
    shuffle_seed: int | None = Field(
        0, description="Seed for shuffling the texts before sampling; null keeps the file order."
    )


GateKey = Literal[  # quantkit.gates.GATE_KEYS (a test keeps the two equal)
    "kld_mean_max", "ppl_increase_max", "top1_agreement_min", "recovery_min",
    "serve_loaded_min", "serve_ready_s_max", "serve_failed_requests_max", "serve_quantization_match_min", "spec_mismatches_max",
]


class _NamedOutput(_Strict):
    name: str | None = Field(
        None,
        pattern=SLUG,
        description="Artifact folder name; defaults to `<recipe name>-<method>-<scheme>`.",
    )
    gates: dict[GateKey, float] = Field(
        default_factory=dict,
        description="Validation thresholds for this output, over the defaults of its precision class (docs/validation.md).",
    )

    def default_name(self, recipe_name: str) -> str:
        scheme = self.scheme.lower().replace("_", "-")
        bits = getattr(self, "bits", None)
        if bits and re.match(r"^w\d", scheme):
            scheme = f"w{bits}{scheme[2:]}"  # a bits override renames W4A16 to W<bits>A16
        suffix = f"-g{self.group_size}" if isinstance(getattr(self, "group_size", None), int) else ""
        return f"{recipe_name}-{self.method}-{scheme}{suffix}"


class _OutputBase(_NamedOutput):
    targets: list[str] = Field(
        default_factory=lambda: ["Linear"],
        description="Modules to quantize: class names or `re:` regexes of module names.",
    )
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="Modules left unquantized: class names, module names or `re:` regexes.",
    )


class _WeightOverrides(BaseModel):
    bits: int | None = Field(None, ge=2, le=8, description="Weight bits; overrides the preset.")
    group_size: int | Literal["channel"] | None = Field(
        None,
        description="Weight group size (a positive integer, or `channel` for one scale per output channel); overrides the preset.",
    )
    symmetric: bool | None = Field(None, description="Symmetric weight quantization; overrides the preset.")

    @field_validator("group_size")
    @classmethod
    def _positive_group(cls, v):
        if isinstance(v, int) and v <= 0:
            raise ValueError("group_size must be a positive integer or 'channel'")
        return v


class AWQOutput(_OutputBase, _WeightOverrides):
    """Activation-aware weight quantization (llm-compressor AWQModifier + QuantizationModifier)."""

    method: Literal["awq"]
    scheme: Literal["W4A16", "W4A16_ASYM", "W8A16"] = "W4A16_ASYM"
    n_grid: int = Field(20, ge=3, le=100, description="Grid points in AWQ's scale search (cost grows linearly; llm-compressor needs at least 3).")
    duo_scaling: bool = Field(True, description="Use weights as well as activations in AWQ's scale search.")


class GPTQOutput(_OutputBase, _WeightOverrides):
    """GPTQ weight quantization (llm-compressor GPTQModifier)."""

    method: Literal["gptq"]
    scheme: Literal["W4A16", "W4A16_ASYM", "W8A16"] = "W4A16"
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="Hessian dampening as a fraction of its mean diagonal.")
    block_size: int = Field(128, ge=1, description="Columns quantized per GPTQ block.")
    actorder: Literal["static", "group", "weight"] | None = Field(
        "static", description="Activation ordering of weight columns; null disables it."
    )


class Int8Output(_OutputBase, _WeightOverrides):
    """INT8 weights and activations (W8A8): SmoothQuant, then GPTQ (or round-to-nearest) weights."""

    method: Literal["int8"]
    scheme: Literal["W8A8"] = "W8A8"
    smoothquant: bool = Field(True, description="Migrate activation outliers into weights first (SmoothQuant).")
    smoothing_strength: float = Field(0.8, ge=0, le=1, description="SmoothQuant alpha.")
    activations: Literal["dynamic", "static"] = Field(
        "dynamic",
        description="int8 activation scales: `dynamic` per token at run time, or `static` per tensor from calibration.",
    )
    weight_algorithm: Literal["gptq", "rtn"] = Field("gptq", description="How int8 weights are rounded.")
    dampening_frac: float = Field(0.01, gt=0, lt=1, description="GPTQ Hessian dampening (weight_algorithm gptq).")


class FP8Output(_OutputBase):
    """FP8 (E4M3) weights and activations; FP8_DYNAMIC needs no calibration data."""

    method: Literal["fp8"]
    scheme: Literal["FP8_DYNAMIC", "FP8", "FP8_BLOCK"] = "FP8_DYNAMIC"


class RTNOutput(_OutputBase, _WeightOverrides):
    """Round-to-nearest weight-only quantization: no calibration, the baseline the others must beat."""

    method: Literal["rtn"]
    scheme: Literal["W4A16", "W4A16_ASYM", "W8A16"] = "W4A16"


# llama-quantize's file types (llama.cpp `tools/quantize`); K-quants need widths divisible by 256
# and fall back per tensor otherwise, which llama-quantize reports.
GGUFType = Literal[
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "Q2_K_S", "IQ4_XS", "IQ4_NL", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS",
    "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ1_0", "TQ2_0",
]
# per-tensor types llama-quantize accepts in --tensor-type / --output-tensor-type / --token-embedding-type
GGUFTensorType = Literal[
    "f32", "f16", "bf16", "q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "q3_k", "q2_k",
    "iq4_xs", "iq4_nl", "iq3_s", "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s",
]
# llama-quantize refuses these without an importance matrix
GGUF_NEEDS_IMATRIX = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "Q2_K_S")


class GGUFOutput(_NamedOutput):
    """GGUF files for llama.cpp (and Ollama, LM Studio): one file per type, one shared imatrix."""

    method: Literal["gguf"]
    types: list[GGUFType] = Field(min_length=1, description="One .gguf file per type.")
    imatrix: bool = Field(True, description="Compute an importance matrix from the calibration set and use it for every type.")
    base_type: Literal["F16", "BF16", "F32"] = Field(
        "F16", description="Precision of the converted GGUF that every type is quantized from."
    )
    output_tensor_type: GGUFTensorType | None = Field(None, description="Type of `output.weight` (llama-quantize --output-tensor-type).")
    token_embedding_type: GGUFTensorType | None = Field(None, description="Type of `token_embd.weight` (--token-embedding-type).")
    tensor_types: dict[str, GGUFTensorType] = Field(
        default_factory=dict, description="Per-tensor overrides: regex of tensor names -> type (--tensor-type)."
    )

    @property
    def scheme(self) -> str:
        return ",".join(self.types)

    def default_name(self, recipe_name: str) -> str:
        return f"{recipe_name}-gguf"

    @field_validator("types")
    @classmethod
    def _unique_types(cls, v: list[str]) -> list[str]:
        dupes = sorted({t for t in v if v.count(t) > 1})
        if dupes:
            raise ValueError(f"types listed twice: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _imatrix_required(self) -> "GGUFOutput":
        needs = [t for t in self.types if t in GGUF_NEEDS_IMATRIX]
        if needs and not self.imatrix:
            raise ValueError(f"{', '.join(needs)} need an importance matrix; set `imatrix: true` or drop them")
        return self


OutputSpec = Annotated[
    Union[AWQOutput, GPTQOutput, Int8Output, FP8Output, RTNOutput, GGUFOutput],
    Field(discriminator="method"),
]
METHODS = ("awq", "gptq", "int8", "fp8", "rtn", "gguf")


class Recipe(_Strict):
    """A quantization run: one model, one calibration set, several outputs."""

    name: str = Field(pattern=SLUG, description="Name of the run; prefix of default artifact names.")
    description: str = ""
    model: ModelSpec
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    output_dir: str = Field("out", description="Folder the artifacts are written into (relative to the working directory).")
    outputs: list[OutputSpec] = Field(min_length=1)

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"source": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _names(self) -> "Recipe":
        seen: dict[str, int] = {}
        for i, out in enumerate(self.outputs):
            if out.name is None:
                out.name = out.default_name(self.name)
            if out.name in seen:
                raise ValueError(
                    f"outputs[{i}] and outputs[{seen[out.name]}] both write '{out.name}'; give one a different `name`"
                )
            seen[out.name] = i
        return self

    def output(self, name: str):
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(name)


def recipe_json_schema() -> dict:
    return Recipe.model_json_schema()


def recipe_json_schema_text() -> str:
    return json.dumps(recipe_json_schema(), indent=2, sort_keys=True) + "\n"


# ---------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise RecipeError(str(path), [f"recipe file not found: {p.resolve()}"])
    return parse_recipe(p.read_text(encoding="utf-8"), source=str(path), overrides=overrides)


def parse_recipe(text: str, source: str = "<recipe>", overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    try:
        root_node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise RecipeError(source, [f"YAML syntax error at {where}: {e.problem or e.context}"]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, ["the recipe must be a YAML mapping with keys name, model, calibration, outputs"])
    problems = []
    if overrides and isinstance(data.get("model"), str):
        data["model"] = {"source": data["model"]}
    for ov in overrides:
        try:
            _apply_override(data, ov)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise RecipeError(source, problems)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(source, [_describe_error(err, data, root_node) for err in e.errors()]) from None


def _apply_override(data: dict, override: str) -> None:
    """`a.b.0.c=VALUE`: VALUE is parsed as YAML (so `16`, `true`, `[a, b]` have their types)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override '{override}' must look like KEY=VALUE, e.g. calibration.num_samples=16")
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = _child(node, part, ".".join(parts[: i + 1]))
        if nxt is None:
            nxt = {}
            node[part] = nxt
        node = nxt
    value = yaml.safe_load(raw)
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ValueError(f"override '{override}': '{'.'.join(parts[:-1])}' is not a mapping or list")


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if isinstance(node, dict):
        return node.get(part)
    raise ValueError(f"override path '{path}' goes through a scalar")


def _index(node: list, part: str, path: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ValueError(f"override path '{path}': '{part}' is not an index of a list of {len(node)} items")
    return int(part)


def _describe_error(err: dict, data: Any, root_node: yaml.Node | None) -> str:
    loc = _clean_loc(err["loc"], data)
    path = _format_loc(loc) or "(recipe)"
    line = _line_of(root_node, loc)
    where = f"{path} (line {line})" if line else path
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent_model = _model_at(loc[:-1], data)
        allowed = sorted(parent_model.model_fields) if parent_model else []
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" Did you mean '{guess[0]}'?" if guess else ""
        return f"{where}: unknown field.{hint} Allowed fields: {', '.join(allowed)}"
    if kind == "literal_error":
        return f"{where}: got {err['input']!r}; allowed values: {ctx.get('expected', '')}"
    if kind == "union_tag_invalid":
        return f"{where}: unknown method {ctx.get('tag')!r}; allowed methods: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return f"{where}: missing `method`; allowed methods: {', '.join(METHODS)}"
    if kind == "missing":
        return f"{where}: required field is missing"
    msg = err["msg"]
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{where}: {msg}"


def _clean_loc(loc: tuple, data: Any) -> tuple:
    """Drop pydantic's union-tag and type segments so the path matches the YAML."""
    out: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and isinstance(part, str) and (
            part in METHODS or part in ("str", "int")
        ):
            continue
        if isinstance(part, str) and "[" in part and "]" in part and not (isinstance(node, dict) and part in node):
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def _format_loc(loc: tuple) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == part:
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


_OUTPUT_CLASSES = {"awq": AWQOutput, "gptq": GPTQOutput, "int8": Int8Output, "fp8": FP8Output, "rtn": RTNOutput, "gguf": GGUFOutput}


def _model_at(loc: tuple, data: Any) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at `loc` (for field suggestions)."""
    if loc == ():
        return Recipe
    if loc == ("model",):
        return ModelSpec
    if loc == ("calibration",):
        return CalibrationSpec
    if len(loc) == 2 and loc[0] == "outputs" and isinstance(loc[1], int):
        outputs = data.get("outputs") if isinstance(data, dict) else None
        if isinstance(outputs, list) and loc[1] < len(outputs) and isinstance(outputs[loc[1]], dict):
            return _OUTPUT_CLASSES.get(outputs[loc[1]].get("method"))
    return None


def slugify(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
