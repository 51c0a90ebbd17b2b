"""A model folder before anything reads a weight: its top-level files are regular files inside it, and its
config.json is a JSON object naming a model type transformers knows, with sizes in bounds."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from quantkit.errors import ModelSourceError
from quantkit.recipe import ModelSpec


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
