"""Which files of a folder are quantkit's: what an engine's staging folder may keep (the format's
allow-list), what an artifact folder holds beyond quantkit's own files (a user's notes), and removing
only quantkit's files when an artifact is replaced. The second of the two lines: quantkit never deletes
or overwrites anything that is not its own artifact (docs/reliability.md)."""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

from pydantic import ValidationError

from quantkit.artifact import (
    ADDED_LATER,
    CODE_POINTERS,
    CODE_SUFFIXES,
    MANIFEST_NAME,
    OWN_FILES,
    SERVE_LOGS,
    Manifest,
    is_artifact,
)


def admit_files(staging: Path, patterns: tuple[str, ...], keep_code_pointers: bool = False) -> tuple[list[str], list[str]]:
    """Make a staging folder hold only what its format defines: remove every file (and folder) no pattern
    of the engine's allow-list names (transformers' save_pretrained copies a model folder's `*.py` beside
    the weights when its config has `auto_map`), and the `auto_map` code pointers from the configs unless
    the recipe trusts the model's code (a model type transformers lacks cannot load without them).
    Returns (removed files, removed keys) for the manifest. Only quantkit's own staging folder is touched."""
    allowed = (*patterns, *OWN_FILES)
    dropped: list[str] = []
    for p in sorted(staging.rglob("*"), reverse=True):  # children before their folder
        rel = p.relative_to(staging).as_posix()
        if p.is_dir() and not p.is_symlink():
            if not any(p.iterdir()):
                p.rmdir()
            continue
        if p.is_symlink() or p.name.lower().endswith(CODE_SUFFIXES) or not any(fnmatch.fnmatchcase(rel, pat) for pat in allowed):
            p.unlink()
            dropped.append(rel)
    keys: list[str] = []
    for name in ("config.json", "tokenizer_config.json"):
        f = staging / name
        if keep_code_pointers or not f.is_file():
            continue
        data = json.loads(f.read_text(encoding="utf-8"))
        found = [k for k in CODE_POINTERS if isinstance(data, dict) and k in data]
        if found:
            for k in found:
                del data[k]
            f.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            keys += [f"{name}:{k}" for k in found]
    return sorted(dropped), keys


def own_entries(path: Path, manifest: Manifest) -> set[str]:
    """The entries of an artifact folder quantkit wrote: the files its manifest lists, the manifest, the files
    quantkit adds later (reports, card, attestation, the local side file, serve logs)."""
    own = {MANIFEST_NAME, *manifest.files, *ADDED_LATER}
    logs = path / SERVE_LOGS
    if logs.is_dir() and not logs.is_symlink():
        own |= {p.relative_to(path).as_posix() for p in logs.rglob("*") if not p.is_dir() or p.is_symlink()}
    return own


def foreign_entries(path: Path) -> list[str]:
    """What an artifact folder holds that quantkit did not write (a user's notes, an experiments folder):
    replacing the artifact would lose them, so quantkit refuses to. [] when the folder is not an artifact."""
    try:
        manifest = Manifest.model_validate_json((Path(path) / MANIFEST_NAME).read_bytes())
    except (OSError, ValidationError, ValueError):
        return []
    own = own_entries(path, manifest)
    found = []
    for root, dirs, files in os.walk(path):
        rel_root = Path(root).relative_to(path)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = (rel_root / name).as_posix()
            if rel not in own:
                found.append(rel)
        for d in list(dirs):
            rel = (rel_root / d).as_posix()
            if not any(o == rel or o.startswith(rel + "/") for o in own):
                found.append(rel + "/")  # a folder of the user's: named once, not walked
                dirs.remove(d)
    return sorted(found)


def remove_own_files(path: Path) -> list[str]:
    """Delete from an artifact folder only what quantkit wrote (own_entries), then the folders left empty;
    anything else stays where it is. Returns what was left (empty when the folder is gone)."""
    try:
        manifest = Manifest.model_validate_json((Path(path) / MANIFEST_NAME).read_bytes())
    except (OSError, ValidationError, ValueError):
        return sorted(p.name for p in Path(path).iterdir())
    for rel in sorted(own_entries(path, manifest), key=lambda r: r != MANIFEST_NAME):  # the manifest last
        f = path / rel
        if f.is_symlink() or f.is_file():
            f.unlink()
    for root, _dirs, _files in sorted(os.walk(path), key=lambda w: len(w[0]), reverse=True):
        if not os.listdir(root):
            os.rmdir(root)
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else []


def replace_problem(dest: Path) -> str | None:
    """Why quantize may not replace what is at `dest` (None: nothing there, or a quantkit artifact holding
    only quantkit's files)."""
    dest = Path(dest)
    if not (dest.exists() or dest.is_symlink()):
        return None
    if not is_artifact(dest):
        return (f"{dest} exists and is not a quantkit artifact (no valid quantkit.json); quantkit replaces only "
                "artifacts, so it was left as it is: move it away or give the output another name")
    foreign = foreign_entries(dest)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return (f"{dest} is a quantkit artifact that also holds files quantkit did not write ({shown}); replacing it "
                "would delete them, so it was left as it is: move them out of the folder")
    return None
