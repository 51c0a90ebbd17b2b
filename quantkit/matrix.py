"""A recipe as a list of jobs: (model × calibration set × output), each with its destination and the
resources it is estimated to need. `quantkit plan` prints them; the executors run them.

The estimates come from the model's config.json alone (no weights, no torch), so a plan for a 405B
model is computed in milliseconds on a laptop. The formulas are in docs/scaling.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quantkit.errors import QuantkitError
from quantkit.gates import DTYPE_BYTES, stored_bits
from quantkit.recipe import Cell, Recipe

CUDA_CONTEXT_BYTES = 1 << 29
RUNTIME_BYTES = 1 << 30  # torch, transformers and llm-compressor themselves, measured ~0.9 GB RSS on CPU
GGUF_METHODS = ("gguf",)


@dataclass(frozen=True)
class ModelShape:
    """Parameter counts of a decoder-only transformer, from its config."""

    params: int
    layer_params: int  # the largest decoder layer
    embedding_params: int  # input embeddings plus an untied output head
    hidden: int
    layers: int
    linear_inputs: tuple[int, ...]  # in_features of the linear layers of one decoder layer


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
    attention = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h
    mlp = 3 * h * expert_inter * experts + (h * experts if experts > 1 else 0)
    layer = attention + mlp + 2 * h
    embedding = vocab * h * (1 if config.get("tie_word_embeddings", False) else 2)
    inputs = (h, h, h, heads * head_dim, h, h, expert_inter)
    return ModelShape(layers * layer + embedding + h, layer, embedding, h, layers, inputs)


@dataclass(frozen=True)
class Estimate:
    """What one job needs at its peak, for the plan and for the executors' resource requests."""

    host_bytes: int
    device_bytes: int  # one GPU, with llm-compressor's sequential onloading (0: the job runs on CPU)
    disk_bytes: int
    wants_gpu: bool
    params: int


def estimate(shape: ModelShape, output, recipe: Recipe) -> Estimate:
    """Peak memory of a job. llm-compressor's sequential pipeline keeps the float model in host RAM (or
    on disk with `model.offload: disk`) and onloads one decoder layer at a time to the device; the
    layer's inputs for every calibration sample are cached in host RAM between layers; the device holds
    the layer, one sample's activations and, for GPTQ, one Hessian (in_features² float32) per linear
    layer. Distributed oneshot splits the samples over GPUs (time), not this per-GPU peak."""
    wbytes = DTYPE_BYTES[recipe.model.dtype]
    cal = recipe.calibration
    if output.method in GGUF_METHODS:
        # the converter streams tensors; llama-quantize maps the F16 file and writes the target
        disk = int(shape.params * (stored_bits(output) + 16) / 8)  # the types and the F16 file they are made from
        return Estimate(RUNTIME_BYTES // 2 + shape.layer_params * 4 * 2, 0, disk, False, shape.params)
    calibrated = output.method not in ("fp8", "rtn") or getattr(output, "scheme", "") == "FP8"
    cached_inputs = cal.num_samples * cal.seq_len * shape.hidden * wbytes * 2 if calibrated else 0
    one_sample = cal.seq_len * (4 * shape.hidden + 2 * max(shape.linear_inputs)) * wbytes if calibrated else 0
    hessians = sum(n * n * 4 for n in shape.linear_inputs) if output.method in ("gptq", "int8") else 0
    layer = shape.layer_params * wbytes
    resident = 0 if recipe.model.offload == "disk" else shape.params * wbytes
    disk = int(shape.params * stored_bits(output) / 8 * 1.1)
    host = resident + layer + cached_inputs + hessians + RUNTIME_BYTES
    return Estimate(host, layer + hessians + one_sample + CUDA_CONTEXT_BYTES, disk, True, shape.params)


@dataclass(frozen=True)
class Job:
    """One artifact to make: an output of one cell of the recipe."""

    id: str  # `<cell folder>/<output name>`, or the output name for a plain recipe
    cell: Cell
    index: int  # position of the output in the recipe
    dest: Path | str  # a folder, or a URL when the output root is one (quantkit.output_roots)

    @property
    def output(self):
        return self.cell.recipe.outputs[self.index]

    @property
    def remote(self) -> bool:
        return isinstance(self.dest, str)


def jobs(recipe: Recipe, output_dir: str | Path | None = None, only: list[str] | None = None) -> list[Job]:
    """Every job of the recipe, model-major. `only` names outputs as the recipe lists them (each applies
    to every cell), or job ids."""
    from quantkit.output_roots import under

    root = output_dir or recipe.output_dir
    cells = recipe.cells()
    listed = [o.name for o in recipe.outputs]
    all_jobs = [Job(f"{c.folder}/{o.name}" if c.folder else o.name, c, i, under(root, c.folder, o.name))
                for c in cells for i, o in enumerate(c.recipe.outputs)]
    if not only:
        return all_jobs
    ids = {j.id for j in all_jobs}
    for n in only:
        if n not in listed and n not in ids:
            raise QuantkitError(f"--only {n}: the recipe has no output or job of that name; outputs: {', '.join(listed)}")
    return [j for j in all_jobs if listed[j.index] in only or j.id in only]


def job_estimates(all_jobs: list[Job]) -> dict[str, Estimate | None]:
    """Each job's estimate (None where its model's config is not on this machine yet: nothing is
    downloaded or converted to find it)."""
    from quantkit.sources.models import peek_config

    shapes: dict[str, ModelShape | None] = {}
    found = {}
    for job in all_jobs:
        key = job.cell.recipe.model.model_dump_json()
        if key not in shapes:
            config = peek_config(job.cell.recipe.model)
            shapes[key] = shape_from_config(config) if config else None
        found[job.id] = estimate(shapes[key], job.output, job.cell.recipe) if shapes[key] else None
    return found


def describe_plan(recipe: Recipe, output_dir: str | Path | None = None, only: list[str] | None = None) -> list[dict]:
    """The job graph as rows: each job with its model, calibration set, output, and estimates (None where
    the model's config is not on this machine yet). Jobs of one cell share the resolved model and the
    tokenized calibration set."""
    from quantkit.engines import engine_for

    selected = jobs(recipe, output_dir, only)
    estimates = job_estimates(selected)
    rows = []
    for job in selected:
        cell, est = job.cell, estimates[job.id]
        out = job.output
        rows.append({
            "job": job.id, "model": cell.recipe.model.source, "calibration": cell.recipe.calibration.source
            if engine_for(out.method).needs_calibration(out) else None,
            "output": out.name, "method": out.method, "scheme": out.scheme, "destination": str(job.dest),
            "params": est.params if est else None,
            "host_bytes": est.host_bytes if est else None, "gpu_bytes": est.device_bytes if est else None,
            "disk_bytes": est.disk_bytes if est else None,
            "device": ("gpu preferred" if est.wants_gpu else "cpu") if est else
            ("gpu preferred" if engine_for(out.method).in_process_torch else "cpu"),
        })
    return rows


def available_host_memory() -> int:
    import psutil

    return psutil.virtual_memory().available


def memory_problems(recipe: Recipe, outputs: list, config: dict, available: int) -> list[str]:
    """Outputs whose estimated peak host memory exceeds what this machine has available, each with the
    figures and the recipe change that would fit (a smaller load dtype, fewer calibration samples)."""
    try:
        shape = shape_from_config(config)
    except QuantkitError:
        return []  # an architecture the arithmetic does not know: not refused on a guess
    problems = []
    for out in outputs:
        est = estimate(shape, out, recipe)
        if est.host_bytes <= available:
            continue
        model_bytes = shape.params * DTYPE_BYTES[recipe.model.dtype]
        fixes = []
        if recipe.model.offload == "none" and est.wants_gpu:
            offloaded = recipe.model.model_copy(update={"offload": "disk"})
            fits = estimate(shape, out, recipe.model_copy(update={"model": offloaded}))
            fixes.append(f"model.offload: disk (about {fits.host_bytes / 1e9:.1f} GB)")
        if recipe.model.dtype == "float32" and est.wants_gpu:
            half = recipe.model.model_copy(update={"dtype": "bfloat16"})
            smaller = estimate(shape, out, recipe.model_copy(update={"model": half}))
            fixes.append(f"model.dtype: bfloat16 (about {smaller.host_bytes / 1e9:.1f} GB)")
        if est.wants_gpu:
            per_sample = recipe.calibration.seq_len * shape.hidden * DTYPE_BYTES[recipe.model.dtype] * 2
            spare = available - (est.host_bytes - recipe.calibration.num_samples * per_sample)
            if per_sample and spare >= per_sample:
                fixes.append(f"calibration.num_samples: {min(recipe.calibration.num_samples - 1, spare // per_sample)}")
        problems.append(
            f"output {out.name}: needs about {est.host_bytes / 1e9:.1f} GB of host memory "
            f"(the {shape.params / 1e9:.2f}B-parameter model in {recipe.model.dtype}: {model_bytes / 1e9:.1f} GB, "
            "plus one layer's calibration work and the libraries); "
            f"this machine has {available / 1e9:.1f} GB available. "
            + (f"What would fit: {' or '.join(fixes)}. " if fixes else "")
            + "Pass --force-memory if the estimate is wrong (docs/scaling.md shows how it is computed)")
    return problems
