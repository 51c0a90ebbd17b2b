"""GGUF through llama.cpp's own tools: convert once, one importance matrix, one file per type.

convert_hf_to_gguf.py (with its sibling gguf-py) writes a high-precision GGUF, llama-imatrix
computes the importance matrix from the recipe's calibration tokens, llama-quantize writes
each type. A failed type is recorded and does not stop the others.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import Future, wait
from pathlib import Path

from quantkit.background import in_background
from quantkit.engines.base import Engine, EngineJob, EngineResult
from quantkit.errors import ModelSourceError, SchemeConstraintError
from quantkit.progress import NullReporter
from quantkit.toolchains.llamacpp import (
    LlamaCpp,
    ToolchainError,
    check_tokenizer_fidelity,
    converted_base,
    require_toolchain,
    stop_converters,
)

_QUANT_SIZE = re.compile(r"quant size\s*=\s*([\d.]+) MiB \(([\d.]+) BPW\)")
_FALLBACK = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")
# llama-imatrix prints "[N]PPL," once per chunk, and only while it computes perplexity (without --no-ppl)
_CHUNK = re.compile(r"\[(\d+)\][-+0-9.a-z]*,")
_IMATRIX_CHUNKS = re.compile(r"computing over (\d+) chunks")
def threads() -> int:
    return max(1, os.cpu_count() or 1)


class GGUFEngine(Engine):
    name = "llama.cpp"
    methods = ("gguf",)
    in_process_torch = False  # llama.cpp's converter imports torch in its own process
    work_in_subprocesses = True

    def artifact_patterns(self, output) -> tuple[str, ...]:
        # one file per type, and the importance matrix they were quantized with (never the calibration text:
        # compute_imatrix keeps it outside the staging folder)
        return (f"{output.name}-*.gguf", "imatrix.gguf")

    def needs_calibration(self, output) -> bool:
        return output.needs_calibration()

    def tool_versions(self) -> dict:
        return {"llama.cpp": require_toolchain().info["llama_cpp_commit"]}

    def describe(self, output) -> str:
        parts = [f"convert_hf_to_gguf → {output.base_type}", f"llama-quantize {', '.join(output.types)}"]
        if output.imatrix:
            parts.append("importance matrix from the calibration set")
        if output.output_tensor_type:
            parts.append(f"output.weight {output.output_tensor_type}")
        if output.token_embedding_type:
            parts.append(f"token_embd {output.token_embedding_type}")
        parts += [f"{pat} {t}" for pat, t in output.tensor_types.items()]
        return "; ".join(parts)

    def preflight(self, output, model) -> None:
        """Cheap refusals before any work: an architecture the converter lacks, or a model folder that
        ships code the converter would run."""
        tc = require_toolchain()
        config = json.loads((model.path / "config.json").read_text())
        archs = config.get("architectures") or []
        unknown = [a for a in archs if not tc.supports_architecture(a)]
        if not archs or unknown:
            raise SchemeConstraintError(
                f"output '{output.name}': llama.cpp's converter ({tc.version}) does not support architecture "
                f"{(unknown or ['(none in config.json)'])[0]}; remove the gguf output or use a model llama.cpp supports"
            )
        risky = [a for a in archs if a in tc.remote_code_architectures]
        shipped = shipped_code(model.path)
        if risky and shipped and not model.spec.trust_remote_code:
            raise ModelSourceError(
                f"output '{output.name}': llama.cpp's converter for {risky[0]} can load the tokenizer with "
                f"trust_remote_code=True, and {model.path.name} ships code ({', '.join(shipped[:3])}); quantkit does not "
                "run it: set model.trust_remote_code: true only if you trust that code"
            )


    # ------------------------------------------------------------------ run

    def __init__(self) -> None:
        self._conversions: dict[tuple[str, str], Future] = {}

    def start(self, output, model) -> None:
        # the converter runs in its own process: it overlaps the import of transformers and the
        # tokenization of the calibration set in this one
        key = (str(model.path), output.base_type)
        if key not in self._conversions:
            self._conversions[key] = in_background(converted_base, require_toolchain(), model, output.base_type,
                                                   NullReporter(), name="quantkit-gguf-convert")

    def abandon(self) -> None:
        if self._conversions:
            stop_converters()
            wait(list(self._conversions.values()), timeout=60)
            self._conversions.clear()

    def run(self, job: EngineJob) -> EngineResult:
        out, rep, staging = job.output, job.reporter, job.staging_dir
        tc = require_toolchain()
        timings: dict[str, float] = {}

        from quantkit.sources.models import load_tokenizer

        t0 = time.perf_counter()
        started = self._conversions.pop((str(job.model.path), out.base_type), None)
        tokenizer = load_tokenizer(job.model)  # while a conversion started early still runs
        if started is not None:
            with rep.task(f"converting to GGUF {out.base_type} (llama.cpp convert_hf_to_gguf.py, started before calibration)"):
                base = started.result()
        else:
            base = converted_base(tc, job.model, out.base_type, rep)
        timings["convert_s"] = round(time.perf_counter() - t0, 3)
        check_tokenizer_fidelity(tc, base, tokenizer)

        imatrix_info = None
        imatrix_path = None
        if out.imatrix:
            t0 = time.perf_counter()
            imatrix_path = staging / "imatrix.gguf"
            imatrix_info = compute_imatrix(tc, base, job, imatrix_path, tokenizer)
            timings["imatrix_s"] = round(time.perf_counter() - t0, 3)

        types: dict[str, dict] = {}
        failures: list[str] = []
        for qtype in out.types:
            target = staging / f"{out.name}-{qtype}.gguf"
            t0 = time.perf_counter()
            try:
                with rep.task(f"llama-quantize {qtype}"):
                    types[qtype] = quantize_type(tc, base, target, qtype, out, imatrix_path)
            except (ToolchainError, subprocess.SubprocessError, OSError) as e:
                target.unlink(missing_ok=True)
                failures.append(f"{qtype}: {e}")
                rep.log(f"{qtype} failed: {str(e).splitlines()[0]}", style="red")
                continue
            types[qtype]["seconds"] = round(time.perf_counter() - t0, 3)
            timings[f"quantize_{qtype}_s"] = types[qtype]["seconds"]
        if not types:
            raise ToolchainError("every GGUF type failed:\n" + "\n".join(failures))
        return EngineResult(
            format="gguf",
            timings_s=timings,
            details={
                "toolchain": tc.manifest_entry(),
                "base_type": out.base_type,
                "types": types,
                "imatrix": imatrix_info,
                "failed_types": failures,
            },
            failures=failures,
        )


def compute_imatrix(tc: LlamaCpp, base: Path, job: EngineJob, target: Path, tok) -> dict:
    cal = job.calibration
    assert cal is not None
    # llama-imatrix reads text: the calibration tokens, decoded; it re-tokenizes them identically
    # (tokenizer fidelity is checked above) and cuts them into the same seq_len chunks. The text is the
    # user's calibration data: it lives in a private temporary folder for the tool's run, never in the
    # staging folder that becomes the artifact (and would be pushed with it)
    with tempfile.TemporaryDirectory(prefix="quantkit-imatrix-") as tmp:
        text_path = Path(tmp) / "calibration.txt"
        text_path.write_text("".join(tok.decode(ids) for ids in cal.input_ids), encoding="utf-8")
        args = ["-m", str(base), "-f", str(text_path), "-o", str(target), "-c", str(cal.spec.seq_len),
                "--chunks", str(len(cal.input_ids)), "-t", str(threads()), "--no-escape"]
        # no --no-ppl: the perplexity it then computes is what prints a line per chunk (the progress counter)
        with job.reporter.task(
            "llama-imatrix (chunks)", total=len(cal.input_ids), tokens=len(cal.input_ids) * cal.spec.seq_len
        ) as task:
            output = _stream_chunks(tc, "llama-imatrix", args, task)
    chunks = _IMATRIX_CHUNKS.search(output)
    return {
        "file": target.name,
        "calibration_fingerprint": cal.fingerprint,
        "chunks": int(chunks.group(1)) if chunks else None,
        "chunk_tokens": cal.spec.seq_len,
    }


def _stream_chunks(tc: LlamaCpp, tool: str, args: list[str], task) -> str:
    """Run a llama.cpp tool that prints `[i]...,` per processed chunk; advance `task` as each arrives
    (whatever the pipe holds is read at once: a blocking read of a fixed size would wait for later chunks)."""
    import codecs

    proc = subprocess.Popen([str(tc.tool(tool)), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    seen, parts, tail = 0, [], ""
    while data := proc.stdout.read1(65536):
        text = decoder.decode(data)
        parts.append(text)
        window, tail = tail + text, (tail + text)[-64:]  # a chunk's mark may straddle two reads
        done = max((int(m) for m in _CHUNK.findall(window)), default=seen)
        if done > seen:
            task.update(completed=done)
            seen = done
    proc.wait()
    output = "".join(parts) + decoder.decode(b"", final=True)
    if proc.returncode != 0:
        raise ToolchainError(f"{tool} failed (exit {proc.returncode}):\n" + "\n".join(output.strip().splitlines()[-12:]))
    return output


def quantize_type(tc: LlamaCpp, base: Path, target: Path, qtype: str, out, imatrix: Path | None) -> dict:
    if qtype == out.base_type:
        shutil.copy2(base, target)
        return {"file": target.name, "bytes": target.stat().st_size, "bpw": None, "imatrix": False, "copied_from_base": True}
    args: list[str] = []
    if imatrix is not None:
        args += ["--imatrix", str(imatrix)]
    if out.output_tensor_type:
        args += ["--output-tensor-type", out.output_tensor_type]
    if out.token_embedding_type:
        args += ["--token-embedding-type", out.token_embedding_type]
    for pattern, ttype in out.tensor_types.items():
        args += ["--tensor-type", f"{pattern}={ttype}"]
    args += [str(base), str(target), qtype, str(threads())]
    proc = tc.run("llama-quantize", args)
    log = proc.stdout + proc.stderr
    size = _QUANT_SIZE.search(log)
    fallback = _FALLBACK.search(log)
    return {
        "file": target.name,
        "bytes": target.stat().st_size,
        "bpw": float(size.group(2)) if size else None,
        "imatrix": imatrix is not None,
        "fallback_tensors": f"{fallback.group(1)} of {fallback.group(2)}" if fallback else None,
    }


def shipped_code(folder: Path) -> list[str]:
    """What in a model folder could make transformers import code: Python files and `auto_map` entries."""
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.py"))
    for name in ("config.json", "tokenizer_config.json", "processor_config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            found.append(f"auto_map in {name}")
    return found
