"""Artifacts: a folder of deployable files plus `quantkit.json`, written atomically.

The manifest records what went in (resolved recipe, model and calibration fingerprints,
library versions) and what came out (sha256 and size of every file), so `validate` and
`push` can check that the folder is complete and unmodified before trusting it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterator

from quantkit.errors import ArtifactError

MANIFEST_NAME = "quantkit.json"
MANIFEST_VERSION = 1
# Files other tools add to an artifact after it was written (reports, cards); not checksummed.
ADDED_LATER = ("validation.json", "validation.md", "validation.html", "README.md")
SERVE_LOGS = "serve-logs"  # vLLM server logs of the serving check, written after the manifest
_PARTIAL_MARK = ".partial-"

TRACKED_LIBRARIES = (
    "quantkit",
    "torch",
    "transformers",
    "llmcompressor",
    "compressed-tensors",
    "accelerate",
    "datasets",
    "gguf",
    "safetensors",
    "tokenizers",
)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_checksums(folder: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel != MANIFEST_NAME and rel not in ADDED_LATER and not rel.startswith(SERVE_LOGS + "/"):
            out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def library_versions(names: tuple[str, ...] = TRACKED_LIBRARIES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Artifact:
    path: Path
    manifest: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def method(self) -> str:
        return self.manifest["output"]["method"]

    @property
    def size_bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"].values())

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "Artifact":
        p = Path(path)
        mf = p / MANIFEST_NAME
        if not p.is_dir():
            raise ArtifactError(f"artifact folder not found: {p}")
        if not mf.is_file():
            raise ArtifactError(f"{p} has no {MANIFEST_NAME}: it is not a quantkit artifact (or it is incomplete)")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{mf} is not valid JSON: {e}") from None
        art = cls(p, manifest)
        if verify:
            art.verify()
        return art

    def verify(self) -> None:
        """Raise ArtifactError naming every file that is missing or differs from the manifest."""
        problems = []
        for rel, info in self.manifest.get("files", {}).items():
            f = self.path / rel
            if not f.is_file():
                problems.append(f"missing: {rel}")
            elif f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
                problems.append(f"modified: {rel} (checksum differs from {MANIFEST_NAME})")
        if problems:
            raise ArtifactError(f"artifact {self.path} does not match its manifest:\n  " + "\n  ".join(problems))


def write_manifest(folder: Path, manifest: dict) -> dict:
    manifest = dict(manifest)
    manifest["manifest_version"] = MANIFEST_VERSION
    manifest["files"] = file_checksums(folder)
    manifest["size_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(dest: Path) -> list[Path]:
    """Remove staging folders of `dest` left by runs that were killed (SIGKILL, power loss)."""
    removed = []
    prefix = f".{dest.name}{_PARTIAL_MARK}"
    if not dest.parent.is_dir():
        return removed
    for p in dest.parent.iterdir():
        if p.name.startswith(prefix):
            try:
                pid = int(p.name[len(prefix):].split("-")[0])
            except ValueError:
                continue
            if not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def check_destination(dest: Path, force: bool) -> None:
    if dest.exists() and not force:
        raise ArtifactError(f"{dest} already exists; pass --force (force=True) to replace it")


@contextlib.contextmanager
def staged_folder(dest: Path, force: bool = False) -> Iterator[Path]:
    """Yield a hidden staging folder beside `dest`; move it into place only if the block succeeds.

    Any exception, Ctrl-C or SystemExit (SIGTERM in the CLI) removes the staging folder, so
    `dest` either holds a complete artifact or is untouched.
    """
    dest = Path(dest)
    check_destination(dest, force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest)
    staging = dest.parent / f".{dest.name}{_PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        check_destination(dest, force)
        if dest.exists():
            trash = dest.parent / f".{dest.name}.replaced-{uuid.uuid4().hex[:8]}"
            os.rename(dest, trash)
            os.rename(staging, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
