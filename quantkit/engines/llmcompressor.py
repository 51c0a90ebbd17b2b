"""AWQ, GPTQ, INT8 (SmoothQuant + GPTQ), FP8 and RTN through llm-compressor's `oneshot`.

The output is a compressed-tensors checkpoint, which transformers loads and vLLM serves.
Calibrated methods use the sequential pipeline (one decoder layer at a time, errors of
earlier layers propagated), which keeps memory at one layer's activations.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from quantkit.engines.base import Engine, EngineJob, EngineResult
from quantkit.engines.llmcompressor_schemes import describe_args, resolved_scheme, scheme_summary
from quantkit.engines.llmcompressor_session import offload_folder, progress_from_tqdm, targeted_linear_shapes
from quantkit.engines.llmcompressor_workarounds import cpu_compat, release_traced_model
from quantkit.errors import SchemeConstraintError
from quantkit.library_logs import route_llmcompressor_logs
from quantkit.threads import compute_threads, pinned_threads

CANDIDATE_GROUP_SIZES = (16, 32, 64, 128, 256)


def _awq_modifiers(output, groups: dict, ignore: list[str]) -> list:
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    return [AWQModifier(n_grid=output.n_grid, duo_scaling=output.duo_scaling),
            QuantizationModifier(config_groups=groups, ignore=ignore)]


def _gptq_modifiers(output, groups: dict, ignore: list[str]) -> list:
    from llmcompressor.modifiers.gptq import GPTQModifier

    return [GPTQModifier(config_groups=groups, ignore=ignore, dampening_frac=output.dampening_frac,
                         block_size=output.block_size, actorder=output.actorder)]


def _int8_modifiers(output, groups: dict, ignore: list[str]) -> list:
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    mods = []
    if output.smoothquant:
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        mods.append(SmoothQuantModifier(smoothing_strength=output.smoothing_strength))
    if output.weight_algorithm == "gptq":
        mods.append(GPTQModifier(config_groups=groups, ignore=ignore, dampening_frac=output.dampening_frac))
    else:
        mods.append(QuantizationModifier(config_groups=groups, ignore=ignore))
    return mods


def _rtn_modifiers(output, groups: dict, ignore: list[str]) -> list:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return [QuantizationModifier(config_groups=groups, ignore=ignore)]


@dataclass(frozen=True)
class LLMCompressorMethod:
    """What one recipe method is in llm-compressor: what it is called, its modifiers, and whether it holds
    GPTQ's Hessians while a layer calibrates (whether it calibrates is the output model's own answer:
    quantkit.recipe)."""

    algorithm: Callable[[Any], str]
    modifiers: Callable[[Any, dict, list[str]], list]
    hessians: bool = False


# A new llm-compressor method is one row here (plus its output model in quantkit.recipe).
METHODS: dict[str, LLMCompressorMethod] = {
    "awq": LLMCompressorMethod(lambda o: "AWQ scale search + round-to-nearest", _awq_modifiers),
    "gptq": LLMCompressorMethod(lambda o: "GPTQ", _gptq_modifiers, hessians=True),
    # SmoothQuant needs activation statistics; GPTQ needs Hessians (estimated for either weight_algorithm:
    # the memory estimate stays on the safe side)
    "int8": LLMCompressorMethod(
        lambda o: ("SmoothQuant + " if o.smoothquant else "") + ("GPTQ" if o.weight_algorithm == "gptq" else "round-to-nearest"),
        _int8_modifiers, hessians=True),
    "fp8": LLMCompressorMethod(lambda o: "round-to-nearest FP8 (E4M3)", _rtn_modifiers),
    "rtn": LLMCompressorMethod(lambda o: "round-to-nearest", _rtn_modifiers),
}


# A compressed-tensors checkpoint as transformers and vLLM load it: weights (sharded or not), configs,
# llm-compressor's recipe, the tokenizer in any of the forms transformers saves
CHECKPOINT_FILES = (
    "config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json", "recipe.yaml",
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
)


class LLMCompressorEngine(Engine):
    name = "llmcompressor"
    methods = tuple(METHODS)

    def artifact_patterns(self, output) -> tuple[str, ...]:
        return CHECKPOINT_FILES

    def needs_calibration(self, output) -> bool:
        return output.needs_calibration()

    def algorithm(self, output) -> str:
        return METHODS[output.method].algorithm(output)

    def needs_hessians(self, output) -> bool:
        return METHODS[output.method].hessians

    def describe(self, output) -> str:
        weights, activations = scheme_summary(output)
        parts = [describe_args(weights, "weights"), describe_args(activations, "activations")]
        return f"{self.algorithm(output)}; {'; '.join(parts)}; ignore {', '.join(output.ignore) or 'nothing'}"


    # ------------------------------------------------------------ preflight

    def compute_threads(self, output) -> int | None:
        # data-free outputs round each weight on its own (min/max per group): no thread count changes them
        return compute_threads() if self.needs_calibration(output) else None

    def preflight(self, output, model) -> None:
        compute_threads()  # a bad QUANTKIT_THREADS is refused before the model loads
        if model.spec.gpus > 1 and self.needs_calibration(output):
            from quantkit.device import gpus_problem

            problem = gpus_problem(model.spec.gpus, "model.gpus")
            if problem:
                raise SchemeConstraintError(problem)
        layers = targeted_linear_shapes(model.path, output.targets, output.ignore, model.spec.trust_remote_code)
        if not layers:
            raise SchemeConstraintError(
                f"output '{output.name}': targets {output.targets} minus ignore {output.ignore} match no layer of the model"
            )
        w = resolved_scheme(output).weights
        strategy = str(getattr(w.strategy, "value", w.strategy))
        if strategy == "group":
            gs = int(w.group_size)
            bad = {name: cols for name, (rows, cols) in layers.items() if cols % gs != 0}
            if bad:
                widths = sorted({c for c in bad.values()})
                all_widths = {cols for _, cols in layers.values()}
                good = [g for g in CANDIDATE_GROUP_SIZES if all(c % g == 0 for c in all_widths)]
                shown = ", ".join(list(bad)[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
                gcd = math.gcd(*all_widths)
                raise SchemeConstraintError(
                    f"output '{output.name}': group_size {gs} does not divide the input width of {len(bad)} "
                    f"targeted layers ({shown}; widths {widths}). Group sizes that divide every targeted layer: "
                    f"{', '.join(map(str, good)) or f'divisors of {gcd}'}. Set `group_size` on this output, "
                    "or add those layers to `ignore`."
                )
        if strategy == "block":
            br, bc = w.block_structure
            bad = {n: s for n, s in layers.items() if s[0] % br or s[1] % bc}
            if bad:
                shown = ", ".join(f"{n} {list(s)}" for n, s in list(bad.items())[:4])
                raise SchemeConstraintError(
                    f"output '{output.name}': FP8_BLOCK needs weight shapes divisible by {br}x{bc}; "
                    f"{len(bad)} targeted layers are not ({shown}). Use FP8_DYNAMIC, or ignore those layers."
                )

        try:
            self.modifiers(output)
        except Exception as e:  # pydantic/compressed-tensors reject the combination
            raise SchemeConstraintError(f"output '{output.name}': llm-compressor rejects this configuration: {e}") from None

    # ------------------------------------------------------------------ run

    def modifiers(self, output) -> list:
        route_llmcompressor_logs()  # the first import of llm-compressor in a quantize: its logs off the caller's stdout
        return METHODS[output.method].modifiers(output, {"group_0": resolved_scheme(output)}, list(output.ignore))

    def oneshot_arguments(self, output, calibration) -> dict:
        """`oneshot`'s arguments for an output, less the model and the processor."""
        kwargs: dict = dict(recipe=self.modifiers(output), log_dir=None)
        if not self.needs_calibration(output):
            return {**kwargs, "pipeline": "datafree"}
        assert calibration is not None, "quantize() builds the calibration set for methods that need it"
        return {**kwargs, "dataset": calibration.to_dataset(), "num_calibration_samples": len(calibration.input_ids),
                "max_seq_length": calibration.spec.seq_len, "shuffle_calibration_samples": False, "pipeline": "sequential"}

    def details(self, output, kwargs: dict, offload: str, patches: list, threads: int, ranks: int = 1) -> dict:
        """What the manifest records under `engine` for an output made with `kwargs` on `threads` CPU threads."""
        return {"algorithm": self.algorithm(output), "description": self.describe(output),
                "modifiers": [type(m).__name__ for m in kwargs["recipe"]], "pipeline": kwargs["pipeline"],
                "offload": offload, "ranks": ranks, "threads": threads, "workarounds": patches}

    def run(self, job: EngineJob) -> EngineResult:
        ranks = job.model.spec.gpus
        if ranks > 1 and not self.needs_calibration(job.output):
            job.reporter.log(f"{job.output.name}: no calibration to split over {ranks} GPUs: quantized in this process")
        distributed = ranks > 1 and self.needs_calibration(job.output)
        with offload_folder(job) if job.model.spec.offload == "disk" or distributed else contextlib.nullcontext() as folder:
            if distributed:  # each rank pins QUANTKIT_THREADS itself (llmcompressor_ranks)
                return self._quantize_ranks(job, ranks, folder)
            with pinned_threads(compute_threads()) as threads:
                return self._quantize(job, folder, threads)

    def _quantize_ranks(self, job: EngineJob, ranks: int, offload_to: Path | None) -> EngineResult:
        """llm-compressor's distributed oneshot: `ranks` torchrun processes, each running
        engines/llmcompressor_ranks.py on its share of the calibration set; they write the checkpoint
        into the staging folder and rank 0 reports its timings."""
        import json
        import signal
        import subprocess
        import sys
        import tempfile

        from quantkit.errors import QuantkitError

        out, cal = job.output, job.calibration
        assert cal is not None, "quantize() builds the calibration set for methods that need it"
        with tempfile.TemporaryDirectory(prefix="quantkit-ranks-") as tmp:
            spec = Path(tmp) / "job.json"
            spec.write_text(json.dumps({
                "model": {"spec": job.model.spec.model_dump(mode="json"), "path": str(job.model.path),
                          "weight_bytes": job.model.weight_bytes},
                "output": out.model_dump(mode="json"),
                "calibration": {"spec": cal.spec.model_dump(mode="json"), "input_ids": cal.input_ids,
                                "fingerprint": cal.fingerprint, "num_texts": cal.num_texts,
                                "available_tokens": cal.available_tokens},
                "staging": str(job.staging_dir), "offload_folder": str(offload_to) if offload_to else None,
                "result": str(Path(tmp) / "result.json"),
            }))
            log = Path(tmp) / "ranks.log"
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                   "-m", "quantkit.engines.llmcompressor_ranks", str(spec)]
            t0 = time.perf_counter()
            with job.reporter.task(f"{out.method}: {self.algorithm(out)} over {ranks} ranks (torchrun)", tokens=cal.num_tokens), \
                    open(log, "w") as sink:
                # its own process group: an interrupt here stops torchrun and every rank, not just torchrun
                proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
                try:
                    code = proc.wait()
                except BaseException:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                    raise
            if code != 0:
                errors = sorted(Path(tmp).glob("rank*.error"))
                text = (errors[0] if errors else log).read_text(errors="replace")
                tail = [line for line in text.splitlines() if line.strip()][-15:]
                raise QuantkitError(f"output '{out.name}': llm-compressor's distributed oneshot over {ranks} ranks failed "
                                    f"(torchrun exit {code}); its last lines:\n  " + "\n  ".join(tail))
            result = json.loads((Path(tmp) / "result.json").read_text())
        timings = {**result["timings_s"], "ranks_wall_s": round(time.perf_counter() - t0, 3)}
        return EngineResult(format="compressed-tensors", timings_s=timings, details=result["details"])

    def _quantize(self, job: EngineJob, offload_to: Path | None, threads: int) -> EngineResult:
        route_llmcompressor_logs()
        from llmcompressor import oneshot

        from quantkit.sources.models import load_float_model, load_tokenizer

        out, rep = job.output, job.reporter
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        model = load_float_model(job.model, rep, offload_to)
        tokenizer = load_tokenizer(job.model)
        timings["load_s"] = round(time.perf_counter() - t0, 3)

        kwargs: dict = dict(model=model, processor=tokenizer, **self.oneshot_arguments(out, job.calibration))
        cal_tokens = job.calibration.num_tokens if self.needs_calibration(out) else None

        from llmcompressor.core import reset_session

        try:
            t0 = time.perf_counter()
            # the tqdm bridge inside the step: its per-layer step ends before the step that holds it
            step = rep.task(f"{out.method}: {self.algorithm(out)}", tokens=cal_tokens)
            with cpu_compat() as patches, step, progress_from_tqdm(rep):
                oneshot(**kwargs)
            timings["quantize_s"] = round(time.perf_counter() - t0, 3)

            t0 = time.perf_counter()
            with rep.task("saving compressed-tensors checkpoint"):
                model.save_pretrained(job.staging_dir, save_compressed=True)
                tokenizer.save_pretrained(job.staging_dir)
            timings["save_s"] = round(time.perf_counter() - t0, 3)
        finally:
            # llm-compressor's global session keeps the model alive; without a reset each
            # output of a recipe adds a model's worth of memory
            reset_session()
            release_traced_model(model)
            del model, kwargs["model"]  # what cycles still hold is collected before the next output (quantize._make)
        return EngineResult(format="compressed-tensors", timings_s=timings,
                            details=self.details(out, kwargs, job.model.spec.offload, patches, threads))
