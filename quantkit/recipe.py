"""Recipes: the typed, declarative description of a quantization run (pydantic models).

A recipe names one model, one calibration set and a list of outputs. Everything is validated
before any model is loaded; `quantkit.recipe_loader` reads YAML into these models and reports
every problem with its field path, its line in the file and the values that would be accepted.

One module because the models are one schema: the output classes, the discriminated union over them and
the recipe that holds them derive from each other (OUTPUT_MODELS), and docs/recipe.schema.json is made from it whole.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from quantkit.formats import format_named
from quantkit.gates import GATE_KEYS, threshold_problem

SLUG = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
MAX_NAME = 200  # a folder name, with room for the staging prefix and suffix within the usual 255 bytes


class _Strict(BaseModel):
    # strict: `true` is not the number 1 and 2.0 is not an int; NaN and infinities are not numbers
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)


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
    offload: Literal["none", "disk"] = Field(
        "none", description=(
            "Where the float weights wait while llm-compressor works layer by layer: `none` (host RAM) or `disk` "
            "(compressed-tensors disk offload: host memory holds about one layer; for models larger than the RAM)."))
    gpus: int = Field(
        1, ge=1, le=64, description=(
            "GPUs for one model's calibration: above 1, llm-compressor's distributed oneshot runs as that many "
            "torchrun ranks, one GPU each (calibration data split across them; GPTQ compresses layers in parallel). "
            "`quantkit quantize --gpus N` sets it."))


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


GateKey = Literal[tuple(GATE_KEYS)]


class _NamedOutput(_Strict):
    name: str | None = Field(
        None,
        pattern=SLUG,
        max_length=MAX_NAME,
        description="Artifact folder name; defaults to `<recipe name>-<method>-<scheme>`.",
    )
    gates: dict[GateKey, float] = Field(
        default_factory=dict,
        description="Validation thresholds for this output, over the defaults of its precision class (docs/validation.md).",
    )

    @field_validator("gates")
    @classmethod
    def _gate_ranges(cls, v: dict[str, float]) -> dict[str, float]:
        problems = [p for k, x in v.items() if (p := threshold_problem(k, x))]
        if problems:
            raise ValueError("; ".join(problems))
        return v

    def default_name(self, recipe_name: str) -> str:
        scheme = self.scheme.lower().replace("_", "-")
        bits = getattr(self, "bits", None)
        if bits and re.match(r"^w\d", scheme):
            scheme = f"w{bits}{scheme[2:]}"  # a bits override renames W4A16 to W<bits>A16
        suffix = f"-g{self.group_size}" if isinstance(getattr(self, "group_size", None), int) else ""
        return f"{recipe_name}-{self.method}-{scheme}{suffix}"


class _OutputBase(_NamedOutput):
    format: ClassVar[str] = "compressed-tensors"  # what its artifact is (quantkit.formats)

    def nominal_bits(self) -> int:
        """The weights' nominal bits: the precision class its default gates come from."""
        return format_named(self.format).nominal_bits(self.scheme, getattr(self, "bits", None))

    def disk_bits(self) -> float:
        """Bits per weight of everything it writes, summed over its files (a coarse size)."""
        return float(self.nominal_bits())

    def needs_calibration(self) -> bool:
        """Whether making this output reads the calibration set (the engines, the matrix planner and
        quantize all ask this; a method that calibrates by its nature keeps this default)."""
        return True

    targets: list[str] = Field(
        default_factory=lambda: ["Linear"],
        description="Modules to quantize: class names or `re:` regexes of module names.",
    )

    @field_validator("targets", "ignore", check_fields=False)
    @classmethod
    def _regexes_compile(cls, v: list[str]) -> list[str]:
        for item in v:
            if item.startswith("re:"):
                try:
                    re.compile(item[3:])
                except re.error as e:
                    raise ValueError(f"{item!r} is not a valid regular expression ({e})") from None
        return v
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head"],
        description="Modules left unquantized: class names, module names or `re:` regexes.",
    )


class _WeightOverrides(BaseModel):
    bits: int | None = Field(None, ge=2, le=8, description="Weight bits; overrides the preset.")
    group_size: int | Literal["channel"] | None = Field(
        None,
        description="Weight group size (a positive integer, or `channel` for one scale per output channel); "
        "overrides the preset.",
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
    n_grid: int = Field(
        20, ge=3, le=100, description="Grid points in AWQ's scale search (cost grows linearly; llm-compressor needs at least 3)."
    )
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

    def needs_calibration(self) -> bool:
        return self.scheme == "FP8"  # static activation scales are observed on the calibration set


class RTNOutput(_OutputBase, _WeightOverrides):
    """Round-to-nearest weight-only quantization: no calibration, the baseline the others must beat."""

    method: Literal["rtn"]
    scheme: Literal["W4A16", "W4A16_ASYM", "W8A16"] = "W4A16"

    def needs_calibration(self) -> bool:
        return False


# llama-quantize's file types (llama.cpp `tools/quantize`); K-quants need widths divisible by 256
# and fall back per tensor otherwise, which llama-quantize reports.
GGUFType = Literal[
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_1",
    "Q5_0",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_1",
    "Q4_0",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
    "Q2_K_S",
    "IQ4_XS",
    "IQ4_NL",
    "IQ3_M",
    "IQ3_S",
    "IQ3_XS",
    "IQ3_XXS",
    "IQ2_M",
    "IQ2_S",
    "IQ2_XS",
    "IQ2_XXS",
    "IQ1_M",
    "IQ1_S",
    "TQ1_0",
    "TQ2_0",
]
# per-tensor types llama-quantize accepts in --tensor-type / --output-tensor-type / --token-embedding-type
GGUFTensorType = Literal[
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q6_k",
    "q5_k",
    "q5_1",
    "q5_0",
    "q4_k",
    "q4_1",
    "q4_0",
    "q3_k",
    "q2_k",
    "iq4_xs",
    "iq4_nl",
    "iq3_s",
    "iq3_xxs",
    "iq2_s",
    "iq2_xs",
    "iq2_xxs",
    "iq1_m",
    "iq1_s",
]
# llama-quantize refuses these without an importance matrix
GGUF_NEEDS_IMATRIX = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M", "Q2_K_S")


class GGUFOutput(_NamedOutput):
    """GGUF files for llama.cpp (and Ollama, LM Studio): one file per type, one shared imatrix."""

    format: ClassVar[str] = "gguf"
    method: Literal["gguf"]
    types: list[GGUFType] = Field(min_length=1, description="One .gguf file per type.")
    imatrix: bool = Field(True, description="Compute an importance matrix from the calibration set and use it for every type.")

    def needs_calibration(self) -> bool:
        return self.imatrix
    base_type: Literal["F16", "BF16", "F32"] = Field(
        "F16", description="Precision of the converted GGUF that every type is quantized from."
    )
    output_tensor_type: GGUFTensorType | None = Field(
        None, description="Type of `output.weight` (llama-quantize --output-tensor-type)."
    )
    token_embedding_type: GGUFTensorType | None = Field(None, description="Type of `token_embd.weight` (--token-embedding-type).")
    tensor_types: dict[str, GGUFTensorType] = Field(
        default_factory=dict, description="Per-tensor overrides: regex of tensor names -> type (--tensor-type)."
    )

    @property
    def scheme(self) -> str:
        return ",".join(self.types)

    def nominal_bits(self) -> int:
        return min(format_named(self.format).nominal_bits(t) for t in self.types)

    def disk_bits(self) -> float:
        from quantkit.formats.gguf import file_type_bits

        return sum(file_type_bits(t) for t in self.types)  # one whole model per type

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


# Every recipe output model; the method names and the discriminated union derive from this one tuple.
OUTPUT_MODELS: tuple[type[_NamedOutput], ...] = (AWQOutput, GPTQOutput, Int8Output, FP8Output, RTNOutput, GGUFOutput)
OUTPUT_CLASSES: dict[str, type[_NamedOutput]] = {get_args(m.model_fields["method"].annotation)[0]: m for m in OUTPUT_MODELS}
METHODS: tuple[str, ...] = tuple(OUTPUT_CLASSES)


def format_of_method(method: str) -> str | None:
    """The format a recipe method writes (None: no such method)."""
    cls = OUTPUT_CLASSES.get(method)
    return cls.format if cls else None
OutputSpec = Annotated[Union[OUTPUT_MODELS], Field(discriminator="method")]


def _label(text: str, fallback: str) -> str:
    """A matrix entry's default label: its source's last part as a folder-safe slug."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip("._-")[:64] or fallback


class MatrixModel(ModelSpec):
    """One model of a matrix recipe."""

    name: str | None = Field(None, pattern=SLUG, max_length=64,
                             description="Label of the model in folder and artifact names; defaults to the source's last part.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"source": v} if isinstance(v, str) else v

    def label(self) -> str:
        if self.name:
            return self.name
        return _label(self.source.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf"), "model")


class MatrixCalibration(CalibrationSpec):
    """One calibration set of a matrix recipe."""

    name: str | None = Field(None, pattern=SLUG, max_length=64,
                             description="Label of the set in folder and artifact names; defaults to the source's last part.")

    def label(self) -> str:
        if self.name:
            return self.name
        return _label(self.source.rstrip("/").rsplit("/", 1)[-1].split(":")[-1].rsplit(".", 1)[0], "calibration")


class Cell(BaseModel):
    """One (model, calibration set) of a recipe: a single-model recipe and the folder its outputs go to."""

    recipe: "Recipe"
    folder: str  # relative to the output root: "" for a plain recipe, else `<model>[/<calibration>]`
    model_label: str | None = None
    calibration_label: str | None = None  # None also for the cell of a model's data-free outputs
    output_indices: list[int] = Field(default_factory=list)  # positions in the recipe's `outputs` of this cell's outputs
    model_index: int | None = None  # the entry of `models` (None: `model`)
    calibration_index: int | None = None  # the entry of `calibrations` its recipe carries (data-free cell: the first)


MAX_JOBS = 10_000  # models × calibrations × outputs of one recipe (quantkit.matrix.jobs); docs/reliability.md


class Recipe(_Strict):
    """A quantization run: one model (or a matrix of `models` × `calibrations`), several outputs."""

    name: str = Field(pattern=SLUG, max_length=MAX_NAME, description="Name of the run; prefix of default artifact names.")
    description: str = ""
    model: ModelSpec | None = Field(None, description="The model to quantize (or list several under `models`).")
    models: list[MatrixModel] | None = Field(
        None, min_length=1, max_length=1000,
        description="A matrix: several models, each quantized into every output (instead of `model`).")
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    calibrations: list[MatrixCalibration] | None = Field(
        None, min_length=1, max_length=1000,
        description="A matrix: several calibration sets, each used for every model and output (instead of `calibration`).")
    output_dir: str = Field("out", description="Folder the artifacts are written into (relative to the working directory).")
    outputs: list[OutputSpec] = Field(min_length=1)

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"source": v} if isinstance(v, str) else v

    @field_validator("output_dir")
    @classmethod
    def _usable_folder_name(cls, v: str) -> str:
        if not v.strip() or "\x00" in v or any(ord(c) < 32 for c in v):
            raise ValueError(f"{v!r} is not a usable folder name (empty, or a NUL or control character)")
        return v

    @model_validator(mode="after")
    def _names(self) -> "Recipe":
        if (self.model is None) == (self.models is None):
            raise ValueError("give either `model` (one model) or `models` (a matrix), not "
                             + ("both" if self.model is not None else "neither"))
        if self.calibrations is not None and "calibration" in self.model_fields_set:
            raise ValueError("give either `calibration` (one set) or `calibrations` (a matrix), not both")
        n_models, n_sets = len(self.models or [None]), len(self.calibrations or [None])
        if n_models * n_sets * len(self.outputs) > MAX_JOBS:  # refused before cells() expands it (1e6 cells: 1.8 GB)
            raise ValueError(f"{n_models} models × {n_sets} calibration sets × {len(self.outputs)} outputs is "
                             f"{n_models * n_sets * len(self.outputs):,} jobs; a recipe may have at most {MAX_JOBS:,}: "
                             "split it into several recipes")
        for field, entries in (("models", self.models), ("calibrations", self.calibrations)):
            labels: dict[str, int] = {}
            for i, entry in enumerate(entries or []):
                if entry.label() in labels:
                    raise ValueError(f"{field}[{i}] and {field}[{labels[entry.label()]}] are both labelled "
                                     f"'{entry.label()}'; give one a different `name`")
                labels[entry.label()] = i
        seen: dict[str, int] = {}
        for i, out in enumerate(self.outputs):
            if out.name is None:
                out.name = out.default_name(self.name)
                if len(out.name) > MAX_NAME:
                    raise ValueError(f"outputs[{i}]: the default name '{out.name[:40]}…' is longer than {MAX_NAME} "
                                     "characters; give the output a shorter `name`")
            if out.name in seen:
                raise ValueError(
                    f"outputs[{i}] and outputs[{seen[out.name]}] both write '{out.name}'; give one a different `name`"
                )
            seen[out.name] = i
        clashes = {c.label(): n for n, c in enumerate(self.calibrations or [])}
        if any(o.name in clashes for o in self.outputs):
            for i, out in enumerate(self.outputs):
                if out.name in clashes and not out.needs_calibration():
                    raise ValueError(f"outputs[{i}] '{out.name}' needs no calibration data, so its artifact is written "
                                     "once per model, beside the calibration sets' folders, and "
                                     f"calibrations[{clashes[out.name]}] is labelled '{out.name}' too; "
                                     "give one a different `name`")
        return self

    @field_validator("calibration", "calibrations")
    @classmethod
    def _calibration_sets(cls, v):
        # a built-in set by name only (never `builtin:../x`), never its holdout split (what validate scores)
        from quantkit.calibration_sets import builtin_problem

        for i, spec in enumerate(v if isinstance(v, list) else [v] if v is not None else []):
            if problem := builtin_problem(spec.source, spec.split):
                raise ValueError(problem.replace("calibration.", f"[{i}]." if isinstance(v, list) else "", 1))
        return v

    @property
    def is_matrix(self) -> bool:
        return self.models is not None or self.calibrations is not None

    def with_gpus(self, gpus: int) -> "Recipe":
        """This recipe with `model.gpus` (or every `models[i].gpus`) set to `gpus` (`--gpus N`)."""
        if self.models is not None:
            return self.model_copy(update={"models": [m.model_copy(update={"gpus": gpus}) for m in self.models]})
        return self.model_copy(update={"model": self.model.model_copy(update={"gpus": gpus})})

    def cells(self) -> list[Cell]:
        """The single-model recipes a matrix expands into (model-major), each with its own folder and a name
        carrying its labels, so default artifact names stay unique across the matrix. A plain recipe is
        one cell: itself. With `calibrations`, the outputs that need no calibration data (as they
        say) form one cell per model, in the model's folder (`<model>/<output>`, or `<output>` with no
        `models`): the same artifact for every set, made once."""
        if not self.is_matrix:
            return [Cell(recipe=self, folder="", output_indices=list(range(len(self.outputs))))]
        # with several sets, an output no set feeds would be the same artifact in each: made once per model
        free = [i for i, o in enumerate(self.outputs) if self.calibrations is not None and not o.needs_calibration()]
        calibrated = [i for i in range(len(self.outputs)) if i not in free]
        sets = self.calibrations or [None]
        cells = []
        for mi, m in enumerate(self.models or [None]):
            # (entry of `calibrations` the cell's recipe carries, the set it is labelled with, its outputs)
            groups = ([(0, None, free)] if free else []) + ([(ci, c, calibrated) for ci, c in enumerate(sets)]
                                                             if calibrated else [])
            for ci, c, indices in groups:
                labels = [x.label() for x in (m, c) if x is not None]
                name = "-".join([self.name, *labels])[:MAX_NAME]
                outputs = []
                for i in indices:
                    o = self.outputs[i]
                    dumped = o.model_dump(mode="json")
                    if o.name == o.default_name(self.name):
                        dumped["name"] = None  # named again after the cell
                    outputs.append(dumped)
                carried = sets[ci]  # a data-free cell's: the first set, unused
                data = {
                    "name": name, "description": self.description, "output_dir": self.output_dir, "outputs": outputs,
                    "model": m.model_dump(mode="json", exclude={"name"}) if m else self.model.model_dump(mode="json"),
                    "calibration": (carried.model_dump(mode="json", exclude={"name"}) if carried
                                    else self.calibration.model_dump(mode="json")),
                }
                cells.append(Cell(recipe=Recipe.model_validate_json(json.dumps(data)), folder="/".join(labels),
                                  model_label=m.label() if m else None, calibration_label=c.label() if c else None,
                                  output_indices=indices, model_index=mi if m else None,
                                  calibration_index=ci if self.calibrations else None))
        return cells


Cell.model_rebuild()


def recipe_json_schema() -> dict:
    return Recipe.model_json_schema()


def recipe_json_schema_text() -> str:
    return json.dumps(recipe_json_schema(), indent=2, sort_keys=True) + "\n"
