"""One rank of llm-compressor's distributed oneshot (`quantkit quantize --gpus N`), started by torchrun
from LLMCompressorEngine._quantize_ranks:

    python -m torch.distributed.run --standalone --nproc-per-node N -m quantkit.engines.llmcompressor_ranks JOB.json

Each rank follows llm-compressor's distributed recipe: join the process group (compressed-tensors'
`init_dist`: one GPU per rank, NCCL), load the model through `load_offloaded_model` (the weights are
read once for all ranks), run `oneshot` on the whole calibration set (llm-compressor gives each rank
its share when every rank passes the same set), and save. Without CUDA (QUANTKIT_CPU_RANKS=1, the
same path for tests on machines without GPUs) the ranks join over gloo instead.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from pathlib import Path


def _join_process_group() -> None:
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        from compressed_tensors.offload import init_dist

        init_dist()
    else:  # compressed-tensors' init_dist needs an accelerator
        dist.init_process_group(backend="gloo", init_method="env://")


def main(job_file: str) -> None:
    import torch.distributed as dist

    from quantkit.threads import compute_threads, pinned_threads

    job = json.loads(Path(job_file).read_text())
    _join_process_group()
    rank = dist.get_rank()
    try:
        with pinned_threads(compute_threads()) as threads:  # QUANTKIT_THREADS, as in one process
            _quantize(job, rank, dist.get_world_size(), threads)
    except BaseException:
        # torchrun's own summary names the rank, not the error: the launcher shows this instead
        Path(job["result"]).with_name(f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    finally:
        dist.destroy_process_group()


def _quantize(job: dict, rank: int, world: int, threads: int) -> None:
    import torch
    from llmcompressor import oneshot
    from llmcompressor.core import reset_session
    from pydantic import TypeAdapter

    from quantkit.engines.llmcompressor import LLMCompressorEngine
    from quantkit.engines.llmcompressor_workarounds import cpu_compat, cpu_ranks_broadcast
    from quantkit.recipe import CalibrationSpec, ModelSpec, OutputSpec
    from quantkit.sources.calibration import CalibrationSet
    from quantkit.sources.models import ResolvedModel, load_float_model, load_tokenizer

    engine = LLMCompressorEngine()
    spec = ModelSpec.model_validate(job["model"]["spec"])
    model_src = ResolvedModel(spec, Path(job["model"]["path"]), "local", "", job["model"]["weight_bytes"])
    output = TypeAdapter(OutputSpec).validate_python(job["output"])
    cal = job["calibration"]
    calibration = CalibrationSet(CalibrationSpec.model_validate(cal["spec"]), cal["input_ids"], cal["fingerprint"],
                                 cal["num_texts"], cal["available_tokens"])
    offload = Path(job["offload_folder"]) if job["offload_folder"] else None

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    # on CPU each rank loads its own copy: with compressed-tensors' shared copy a layer came out as
    # noise in our tests (docs/decisions.md)
    model = load_float_model(model_src, None, offload, distributed=torch.cuda.is_available())
    tokenizer = load_tokenizer(model_src)
    timings["load_s"] = round(time.perf_counter() - t0, 3)
    kwargs = engine.oneshot_arguments(output, calibration)
    try:
        t0 = time.perf_counter()
        on_cpu = not torch.cuda.is_available()
        with cpu_compat() as patches, cpu_ranks_broadcast() if on_cpu else contextlib.nullcontext([]) as more:
            oneshot(model=model, processor=tokenizer, **kwargs)
        patches = patches + more
        timings["quantize_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        model.save_pretrained(job["staging"], save_compressed=True)  # every rank: llm-compressor gathers to rank 0
        if rank == 0:
            tokenizer.save_pretrained(job["staging"])
        timings["save_s"] = round(time.perf_counter() - t0, 3)
    finally:
        reset_session()
    if rank == 0:
        details = engine.details(output, kwargs, spec.offload, patches, threads, ranks=world)
        Path(job["result"]).write_text(json.dumps({"timings_s": timings, "details": details}))


if __name__ == "__main__":
    main(sys.argv[1])
