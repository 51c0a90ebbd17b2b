"""Artifacts: a folder of deployable files plus `quantkit.json`, written atomically.

The manifest records what went in (resolved recipe, model and calibration fingerprints,
library versions) and what came out (sha256 and size of every file), so `validate` and
`push` can check that the folder is complete and unmodified before trusting it.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantkit.errors import ArtifactError
from quantkit.files import sha256_files

MANIFEST_NAME = "quantkit.json"
MANIFEST_VERSION = 1
# Files other tools add to an artifact after it was written (reports, the card and attestation a push
# brings back, a hub's .gitattributes); not checksummed, and the only files the manifest may omit.
ATTESTATION_NAME = "quantkit-provenance.intoto.json"
# absolute paths of the machine that made the artifact (the base model's folder): never in the manifest,
# never pushed; a copy without it (pulled, moved) finds a built-in or hub base again from its source
LOCAL_NAME = "quantkit.local.json"
ADDED_LATER = ("validation.json", "validation.md", "validation.html", "README.md", ATTESTATION_NAME, ".gitattributes",
               LOCAL_NAME)
SERVE_LOGS = "serve-logs"  # vLLM server logs of the serving check, written after the manifest

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


def file_checksums(folder: Path) -> dict[str, dict]:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and _is_content(p.relative_to(folder).as_posix())]
    return {p.relative_to(folder).as_posix(): {"sha256": digest, "bytes": p.stat().st_size}
            for p, digest in zip(files, sha256_files(files))}


def _is_content(rel: str) -> bool:
    """A file the manifest lists (not the manifest itself, files added after it, or serve logs)."""
    return rel != MANIFEST_NAME and rel not in ADDED_LATER and not rel.startswith(SERVE_LOGS + "/")


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


class FileRecord(BaseModel):
    sha256: str
    bytes: int


class BaseModelRecord(BaseModel):
    """The float model an artifact was made from, as `quantize` resolved it."""

    model_config = ConfigDict(extra="allow")
    source: str
    kind: str
    path: str
    fingerprint: str
    weight_bytes: int
    revision: str | None = None
    origin: dict[str, Any] = Field(default_factory=dict)


class CalibrationRecord(BaseModel):
    """The calibration set (its recipe fields, fingerprint and size)."""

    model_config = ConfigDict(extra="allow")
    source: str
    fingerprint: str
    num_tokens: int
    num_samples: int
    seq_len: int


class Manifest(BaseModel):
    """`quantkit.json`: what went into an artifact and what came out. Version 1 is what quantkit has
    always written; fields it does not know (from a newer quantkit) are kept, not dropped."""

    model_config = ConfigDict(extra="allow")
    manifest_version: int = MANIFEST_VERSION
    name: str
    created: str
    format: str  # "compressed-tensors" | "gguf"
    scheme: str
    description: str = ""
    output: dict[str, Any]  # the recipe output that made it (method, scheme, gates, ...)
    recipe: dict[str, Any] = Field(default_factory=dict)
    base_model: BaseModelRecord
    calibration: CalibrationRecord | None = None
    libraries: dict[str, str] = Field(default_factory=dict)
    engine: dict[str, Any] = Field(default_factory=dict)  # engine-specific record (GGUF: the file of each type)
    failures: list[str] = Field(default_factory=list)
    timings_s: dict[str, float] = Field(default_factory=dict)
    peak_rss_bytes: int | None = None
    peak_rss_method: str | None = None
    compression_ratio: float | None = None
    files: dict[str, FileRecord] = Field(default_factory=dict)
    size_bytes: int = 0
    # sha256 of each input that decides the output (model, calibration tokens, output spec, libraries,
    # tools) and of all of them: a re-run skips an output whose inputs are unchanged (quantize resume)
    inputs: dict[str, str | None] = Field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.output["method"]

    @property
    def gates(self) -> dict[str, float]:
        return dict(self.output.get("gates") or {})

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Target:
    """One deployable model in an artifact: the compressed-tensors folder, or one GGUF file."""

    name: str  # "ARTIFACT" or "ARTIFACT/TYPE"
    path: Path
    format: str
    method: str
    scheme: str  # compressed-tensors scheme, or the GGUF type
    bytes: int
    bits: int | None = None  # a bits override of the recipe output (its precision class)


@dataclass
class Artifact:
    path: Path
    manifest: Manifest = field(repr=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def method(self) -> str:
        return self.manifest.method

    @property
    def base_path(self) -> Path | None:
        """The base model's folder on this machine: from the local side file, else (manifests of older
        quantkit) the manifest; None when neither names one."""
        try:
            local = json.loads((self.path / LOCAL_NAME).read_text(encoding="utf-8"))
            found = local.get("base_model_path") if isinstance(local, dict) else None
        except (OSError, ValueError):
            found = None
        found = found or self.manifest.base_model.path
        return Path(found) if isinstance(found, str) and found else None

    def targets(self) -> list[Target]:
        """The deployable models, in recipe order (GGUF: each type that was written)."""
        m = self.manifest
        if m.format != "gguf":
            return [Target(m.name, self.path, m.format, m.method, m.scheme, m.size_bytes, m.output.get("bits"))]
        written = m.engine.get("types") or {}
        return [Target(f"{m.name}/{q}", self.path / written[q]["file"], "gguf", m.method, q, written[q]["bytes"])
                for q in m.output.get("types", []) if q in written]

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> "Artifact":
        p = Path(path)
        mf = p / MANIFEST_NAME
        if not p.is_dir():
            raise ArtifactError(f"artifact folder not found: {p}")
        if not mf.is_file():
            raise ArtifactError(f"{p} has no {MANIFEST_NAME}: it is not a quantkit artifact (or it is incomplete)")
        try:
            manifest = Manifest.model_validate_json(mf.read_bytes())
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"]) or "(top level)"
            raise ArtifactError(f"{mf} is not a valid quantkit manifest: {where}: {first['msg']}") from None
        art = cls(p, manifest)
        if verify:
            art.verify()
        return art

    def verify(self, digests: dict[str, str] | None = None) -> None:
        """Raise ArtifactError naming every file that is missing or differs from the manifest, every file
        the manifest does not list (an artifact is closed: a planted `modeling_x.py` or `*.bin` is
        refused), and a manifest that contradicts itself. `digests`: sha256 already computed in this
        process for some files (relative path -> hex), so they are not read a second time."""
        digests = digests or {}
        problems = self.manifest_problems()
        listed = set(self.manifest.files)
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path).as_posix()
            if (p.is_file() or p.is_symlink()) and rel not in listed and _is_content(rel):
                problems.append(f"not in {MANIFEST_NAME}: {rel}")
        to_hash = []
        for rel, info in self.manifest.files.items():
            f = self.path / rel
            if not f.is_file():
                problems.append(f"missing: {rel}")
            elif f.stat().st_size != info.bytes:
                problems.append(f"modified: {rel} (size differs from {MANIFEST_NAME})")
            elif rel not in digests:
                to_hash.append(rel)
        hashed = dict(zip(to_hash, sha256_files([self.path / r for r in to_hash])))
        for rel, digest in {**digests, **hashed}.items():
            if rel in self.manifest.files and digest != self.manifest.files[rel].sha256:
                problems.append(f"modified: {rel} (checksum differs from {MANIFEST_NAME})")
        if problems:
            shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
            raise ArtifactError(f"artifact {self.path} does not match its manifest:\n  " + "\n  ".join(shown))

    def manifest_problems(self) -> list[str]:
        """Fields of the manifest that disagree with each other (an edit by hand, or a corrupted file)."""
        m, out = self.manifest, []
        if m.output.get("name") not in (None, m.name):
            out.append(f"name {m.name!r} differs from output.name {m.output.get('name')!r}")
        if (m.format == "gguf") != (m.output.get("method") == "gguf"):
            out.append(f"format {m.format!r} does not fit output.method {m.output.get('method')!r}")
        if m.format != "gguf" and m.output.get("scheme") not in (None, m.scheme):
            out.append(f"scheme {m.scheme!r} differs from output.scheme {m.output.get('scheme')!r}")
        if m.size_bytes != sum(f.bytes for f in m.files.values()):
            out.append(f"size_bytes {m.size_bytes} is not the sum of the files' sizes")
        for rel in m.files:
            if rel.startswith("/") or ".." in Path(rel).parts:
                out.append(f"files names a path outside the artifact: {rel!r}")
        return out


def is_artifact(path: Path) -> bool:
    """A folder quantkit wrote: its quantkit.json parses as a manifest (what `--force` may replace)."""
    try:
        Manifest.model_validate_json((Path(path) / MANIFEST_NAME).read_bytes())
    except (OSError, ValidationError, ValueError):
        return False
    return Path(path).is_dir() and not Path(path).is_symlink()


def write_manifest(folder: Path, fields: dict) -> Manifest:
    """Checksum every file of `folder` and write `quantkit.json` from `fields` (validated first)."""
    files = file_checksums(folder)
    manifest = Manifest.model_validate({**fields, "manifest_version": MANIFEST_VERSION, "files": files,
                                        "size_bytes": sum(f["bytes"] for f in files.values())})
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    return manifest
