"""A folder's safetensors checkpoint against its config.json, from the headers and one sequential read: every
weight transformers needs is there in the shape the config implies, in a float dtype, and finite."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from quantkit.errors import ModelSourceError
from quantkit.files import atomic_write_text, cache_dir
from quantkit.formats.tensors import FLOAT_DTYPES, CheckpointTensor, read_checkpoint_headers
from quantkit.formats.tensors import shown as _shown
from quantkit.recipe import ModelSpec

WEIGHT_PATTERNS_SAFE = ("*.safetensors",)
WEIGHT_PATTERNS_PICKLE = ("*.bin", "*.pt", "*.pth")


def weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    files = sorted(p for pat in WEIGHT_PATTERNS_SAFE for p in folder.glob(pat))
    if not files and allow_pickle:
        files = sorted(p for pat in WEIGHT_PATTERNS_PICKLE for p in folder.glob(pat))
    return files


FINITE_CHUNK_BYTES = 1 << 26  # read at a time for the finiteness check (a multiple of 8: whole elements of every dtype)
FINITE_CACHE_VERSION = 1


def checkpoint_files(folder: Path, config: dict) -> list[Path]:
    """The safetensors files transformers loads from `folder`: config.json's `transformers_weights`,
    else model.safetensors, else the shards model.safetensors.index.json names (other *.safetensors,
    such as a consolidated.safetensors beside the shards, are not loaded and not checked)."""
    explicit = config.get("transformers_weights")
    if isinstance(explicit, str):
        chosen = folder / explicit
        if not chosen.resolve().is_relative_to(folder.resolve()) or not chosen.is_file():
            raise ModelSourceError(f"{folder / 'config.json'}: transformers_weights {explicit[:80]!r} is not a file in {folder}")
    elif (folder / "model.safetensors").is_file():
        chosen = folder / "model.safetensors"
    elif (folder / "model.safetensors.index.json").is_file():
        chosen = folder / "model.safetensors.index.json"
    else:
        found = ", ".join(p.name for p in weight_files(folder, False)[:3])
        raise ModelSourceError(f"{folder} has {found} but neither model.safetensors nor model.safetensors.index.json, "
                               "the files transformers loads: rename a single file to model.safetensors")
    if not chosen.name.endswith(".index.json"):
        return [chosen]
    try:
        weight_map = json.loads(chosen.read_bytes().decode("utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as e:
        raise ModelSourceError(f"{chosen} is not a safetensors index (a JSON object with a weight_map): "
                               f"{type(e).__name__}") from None
    files = []
    for shard in shards:
        path = folder / str(shard)
        if not isinstance(shard, str) or "/" in shard or shard.startswith(".") or not path.is_file():
            raise ModelSourceError(f"{chosen} names the shard {str(shard)[:80]!r}, which is not a file in {folder}")
        files.append(path)
    return files


def weight_problems(folder: Path, spec: ModelSpec, config: dict, tensors: list[CheckpointTensor]) -> list[str]:
    """The checkpoint against the model config.json describes, built on the meta device (nothing
    allocated): parameters missing (transformers would initialise them at random), tensors it does not
    expect, shapes that differ from the config's, dtypes that are not float. Checkpoint names go through
    transformers' own renaming (legacy names, base-model prefixes, fused MoE experts) as from_pretrained
    does; parameters transformers ties (tie_word_embeddings) or declares optional may be absent, and
    buffers (rotary inv_freq) are not looked for.

    A config AutoModelForCausalLM has no class for (a vision-language model) is not checked here: a GGUF
    output reads it with llama.cpp's converter, which has its own checks, and llm-compressor's preflight
    refuses it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.utils.loading_report import LoadStateDictInfo

    try:
        hf_config = AutoConfig.from_pretrained(str(folder), trust_remote_code=spec.trust_remote_code)
        remote = spec.trust_remote_code and "AutoModelForCausalLM" in (getattr(hf_config, "auto_map", None) or {})
        if type(hf_config) not in MODEL_FOR_CAUSAL_LM_MAPPING and not remote:
            return []
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=spec.trust_remote_code)
    except Exception as e:  # noqa: BLE001 - a hostile config.json reaches transformers' own validators (strict dataclasses too)
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelSourceError(f"{folder / 'config.json'}: transformers cannot build a causal language model from it "
                               f"({type(e).__name__}: {detail})") from None
    meta = model.state_dict()
    names_of: dict[int, list[str]] = {}  # a parameter and every name it has (tied parameters share one)
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    parameter_names = {n for names in names_of.values() for n in names}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}

    found: set[str] = set()
    unexpected: list[str] = []
    wrong_shape: list[str] = []
    not_float: dict[str, list[str]] = {}
    for t in tensors:
        key, pattern = rename_source_key(t.name, renamings, converters, model.base_model_prefix, meta)
        if key not in meta and t.name in meta:
            key, pattern = rename_source_key(t.name, [], [], model.base_model_prefix, meta)
        if key not in meta:
            unexpected.append(t.name)
            continue
        if pattern is None:
            found.add(key)
            if tuple(meta[key].shape) != t.shape:
                wrong_shape.append(f"{t.name} {list(t.shape)} (config.json implies {list(meta[key].shape)})")
        else:  # several checkpoint tensors fused into one parameter (or one split into several): no 1:1 shape
            targets = by_pattern[pattern].target_patterns
            found.update(key.replace(targets[0], target) for target in targets)
        if key in parameter_names and t.dtype not in FLOAT_DTYPES:
            not_float.setdefault(t.dtype, []).append(t.name)

    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    info = LoadStateDictInfo(missing_keys={names[0] for names in names_of.values()
                                           if not found.intersection(names) and not tied.intersection(names)},
                             unexpected_keys=set(unexpected), mismatched_keys=set(), conversion_errors={},
                             error_msgs=[], skipped_pp_keys=set())
    model._adjust_missing_and_unexpected_keys(info)  # transformers' own rules for optional keys (private: pinned <5.18)
    problems = []
    if info.missing_keys:
        problems.append(f"missing {len(info.missing_keys)} weight(s) {type(model).__name__} needs (transformers would "
                        f"initialise them at random): {_shown(sorted(info.missing_keys))}")
    if info.unexpected_keys:
        problems.append(f"{len(info.unexpected_keys)} tensor(s) {type(model).__name__} has no place for: "
                        f"{_shown(sorted(info.unexpected_keys))}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) of another shape than config.json implies: {_shown(wrong_shape)}")
    for dtype, names in sorted(not_float.items()):
        problems.append(f"{len(names)} tensor(s) in {dtype}, not a float dtype ({'/'.join(FLOAT_DTYPES)}): {_shown(names)}")
    if problems and isinstance(config.get("quantization_config"), dict):
        method = config["quantization_config"].get("quant_method", "?")
        problems.append(f"config.json has a quantization_config ({str(method)[:40]}): this is an already quantized model; "
                        "quantkit quantizes float checkpoints (or a .gguf file, which it dequantizes itself)")
    return problems


def nonfinite_tensors(tensors: list[CheckpointTensor]) -> list[str]:
    """Tensors holding a NaN or an infinity. Each file is read once, sequentially, through one reused
    buffer of FINITE_CHUNK_BYTES (no mmap: memory stays at one buffer, and the pages read are the page
    cache's, not the process's, whatever the shard's size). A clean file's verdict is cached like its hash
    (keyed by path, size, mtime and inode), so a base is read for this once, not once per run."""
    bad = []
    for path in sorted({t.file for t in tensors}):
        record, key = _finite_record(path)
        try:
            if json.loads(record.read_text()).get("key") == key:
                continue
        except (OSError, ValueError, AttributeError):
            pass
        bad_here = _nonfinite_in_file(path, {t.name for t in tensors if t.file == path and t.dtype in FLOAT_DTYPES})
        if bad_here:
            bad += bad_here
        else:
            record.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(record, json.dumps({"key": key, "finite": True}) + "\n")
    return bad


def _nonfinite_in_file(path: Path, names: set[str]) -> list[str]:
    """`names` of the safetensors file at `path` (its header already validated by safe_open) that hold a
    NaN or an infinity."""
    import contextlib

    import torch

    dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    bad = []
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(min(FINITE_CHUNK_BYTES, -(-os.fstat(f.fileno()).st_size // 8) * 8))  # whole elements of any dtype
        view = memoryview(buffer)
        with contextlib.suppress(AttributeError, OSError):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        entries = sorted((header[n]["data_offsets"], n) for n in names)
        for (start, end), name in entries:
            dtype = dtypes[header[name]["dtype"]]
            f.seek(8 + size + start)
            left = end - start
            while left:
                n, want = 0, min(left, len(buffer))
                while n < want:  # whole elements only: a short read would split one
                    got = f.readinto(view[n:want])
                    if not got:
                        raise ModelSourceError(f"{path} ends inside tensor {name}: a truncated file")
                    n += got
                if not _all_finite(torch.frombuffer(buffer, dtype=dtype, count=n // dtype.itemsize)):
                    bad.append(name)
                    break
                left -= n
    return bad


def _all_finite(chunk) -> bool:
    """A NaN or an infinity makes the sum NaN or infinite, and a sum is ~10x faster than torch.isfinite on CPU
    (no bool tensor): a finite sum settles it. A sum that overflowed (a half-precision chunk of large values)
    is settled element by element."""
    import torch

    return bool(torch.isfinite(chunk.sum())) or bool(torch.isfinite(chunk).all())


def _finite_record(path: Path) -> tuple[Path, list]:
    path = Path(path).resolve()
    st = path.stat()
    record = cache_dir() / "fingerprints" / "finite" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    return record, [FINITE_CACHE_VERSION, str(path), st.st_size, st.st_mtime_ns, st.st_ino]


def check_weights(folder: Path, spec: ModelSpec, config: dict) -> None:
    """The safetensors weights of a local or hub folder, before the model is loaded: what transformers
    would load matches what config.json describes (weight_problems), and every value is finite.
    One ModelSourceError naming the tensors."""
    folder = Path(folder)
    tensors = read_checkpoint_headers(checkpoint_files(folder, config))
    problems = weight_problems(folder, spec, config, tensors)
    if problems:
        raise ModelSourceError(f"{folder}: the weights do not match config.json: {'; '.join(problems)}")
    bad = nonfinite_tensors(tensors)
    if bad:
        raise ModelSourceError(f"{folder}: {len(bad)} weight tensor(s) hold NaN or infinite values (a broken checkpoint; "
                               f"quantizing it would give a broken model): {_shown(bad)}")
