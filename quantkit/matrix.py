"""The resources each job of a recipe (quantkit.jobs) is estimated to need: `quantkit plan` prints them,
the executors request them, and quantize's memory preflight refuses what cannot fit.

The estimates come from the model's config.json alone (no weights, no torch), so a plan for a 405B
model is computed in milliseconds on a laptop. The formulas are in docs/scaling.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quantkit.errors import QuantkitError
from quantkit.estimates import DTYPE_BYTES, ModelShape, artifact_bytes, gguf_base_bytes, shape_from_config
from quantkit.jobs import Job, plan
from quantkit.recipe import Recipe

CUDA_CONTEXT_BYTES = 1 << 29
RUNTIME_BYTES = 1 << 30  # torch, transformers and llm-compressor themselves, measured ~0.9 GB RSS on CPU

@dataclass(frozen=True)
class Estimate:
    """What one job needs at its peak, for the plan and for the executors' resource requests."""

    host_bytes: int
    device_bytes: int  # one GPU, with llm-compressor's sequential onloading (0: the job runs on CPU)
    disk_bytes: int  # the artifact, in the output root (quantkit.estimates)
    wants_gpu: bool
    params: int
    cache_bytes: int = 0  # GGUF: the converted base in quantkit's cache, written once per model


def estimate(shape: ModelShape, output, recipe: Recipe) -> Estimate:
    """Peak memory of a job. llm-compressor's sequential pipeline keeps the float model in host RAM (or
    on disk with `model.offload: disk`) and onloads one decoder layer at a time to the device; the
    layer's inputs for every calibration sample are cached in host RAM between layers; the device holds
    the layer, one sample's activations and, for GPTQ, one Hessian (in_features² float32) per linear
    layer. Distributed oneshot splits the samples over GPUs (time), not this per-GPU peak."""
    from quantkit.engines import engine_for

    wbytes = DTYPE_BYTES[recipe.model.dtype]
    cal = recipe.calibration
    disk = artifact_bytes(shape, output, recipe.model.dtype)
    engine = engine_for(output.method)
    if engine.work_in_subprocesses:
        # llama.cpp's tools: the converter streams tensors; llama-quantize maps the F16 file and writes the target
        return Estimate(RUNTIME_BYTES // 2 + shape.layer_params * 4 * 2, 0, disk, False, shape.params,
                        gguf_base_bytes(shape, output.base_type))
    calibrated = output.needs_calibration()
    cached_inputs = cal.num_samples * cal.seq_len * shape.hidden * wbytes * 2 if calibrated else 0
    one_sample = cal.seq_len * (4 * shape.hidden + 2 * max(shape.linear_inputs)) * wbytes if calibrated else 0
    hessians = sum(n * n * 4 for n in shape.linear_inputs) if engine.needs_hessians(output) else 0
    layer = shape.layer_params * wbytes
    resident = 0 if recipe.model.offload == "disk" else shape.params * wbytes
    host = resident + layer + cached_inputs + hessians + RUNTIME_BYTES
    return Estimate(host, layer + hessians + one_sample + CUDA_CONTEXT_BYTES, disk, True, shape.params)


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

    selected = plan(recipe, output_dir, only)
    estimates = job_estimates(selected)
    rows = []
    for job in selected:
        cell, est = job.cell, estimates[job.id]
        out = job.output
        rows.append({
            "job": job.id, "cell": cell.folder, "model": cell.recipe.model.source, "calibration": cell.recipe.calibration.source
            if out.needs_calibration() else None,
            "output": out.name, "method": out.method, "scheme": out.scheme, "destination": str(job.dest),
            "params": est.params if est else None,
            "host_bytes": est.host_bytes if est else None, "gpu_bytes": est.device_bytes if est else None,
            "disk_bytes": est.disk_bytes if est else None, "cache_bytes": est.cache_bytes if est else None,
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
