"""Artifacts: a folder of deployable files plus `quantkit.json`, written atomically.

The manifest records what went in (resolved recipe, model and calibration fingerprints,
library versions) and what came out (sha256 and size of every file), so `validate` and
`push` can check that the folder is complete and unmodified before trusting it. One module because the
manifest model, its self-consistency checks and `Artifact.verify` are one contract that validate,
push and resume all trust; which files of a folder are quantkit's is `quantkit.artifact_files`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantkit.errors import ArtifactError
from quantkit.files import sha256_files
from quantkit.formats import FORMATS, Target, format_named
from quantkit.formats.tensors import Coverage
from quantkit.recipe import format_of_method

MANIFEST_NAME = "quantkit.json"
MANIFEST_VERSION = 1
# Files other tools add to an artifact after it was written (reports, the card and attestation a push
# brings back, a hub's .gitattributes); not checksummed, and the only files the manifest may omit.
ATTESTATION_NAME = "quantkit-provenance.intoto.json"
# absolute paths of the machine that made the artifact (the base model's folder): never in the manifest,
# never pushed; a copy without it (pulled, moved) finds a built-in or hub base again from its source
LOCAL_NAME = "quantkit.local.json"
# a pulled artifact's attested validation.json, kept here by `validate` before it writes its own report
# (`verify` checks the attested one here; quantkit.publish.provenance.keep_attested_report)
ATTESTED_VALIDATION_NAME = "validation.attested.json"
ADDED_LATER = ("validation.json", "validation.md", "validation.html", "README.md", ATTESTATION_NAME, ".gitattributes",
               LOCAL_NAME, ATTESTED_VALIDATION_NAME)
SERVE_LOGS = "serve-logs"  # vLLM server logs of the serving check, written after the manifest
# Files every artifact may hold whatever its format (quantkit's own side file); each engine names the rest
# (Engine.artifact_patterns): an allow-list, so what a model folder ships beyond them never travels.
OWN_FILES = (LOCAL_NAME,)
# Executable content: never part of an artifact, even when a manifest lists it (a forged manifest)
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so", ".dylib", ".dll", ".exe", ".sh", ".bat", ".ps1", ".pth")
# keys of config.json / tokenizer_config.json that point a loader at a folder's own code
CODE_POINTERS = ("auto_map",)

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
    files = [p for p in sorted(folder.rglob("*"))
             if p.is_file() and not p.is_symlink() and _is_content(p.relative_to(folder).as_posix())]
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


def json_digest(obj) -> str:
    """sha256 of a JSON value in one canonical spelling (the input fingerprints of quantize)."""
    import hashlib

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


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
    format: str  # a name in quantkit.formats.FORMATS
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
    # what the engine wrote that is not part of the format (a model folder's code copied by save_pretrained),
    # left out of the artifact, and the code pointers (auto_map) removed from its configs
    dropped_files: list[str] = Field(default_factory=list)
    dropped_keys: list[str] = Field(default_factory=list)
    # each target's coverage table (quantkit.coverage): how every base tensor is in it; None: an older quantkit
    coverage: dict[str, Coverage] | None = None

    @property
    def method(self) -> str:
        return self.output["method"]

    @property
    def spec(self):
        """`output` as the recipe's typed output model (quantkit.recipe.OutputSpec). The recorded JSON stays
        the field itself: `inputs.output` is the digest of exactly what quantize wrote, defaults included."""
        from pydantic import TypeAdapter

        from quantkit.recipe import OutputSpec

        # the name is the manifest's own (checked against `name` by manifest_problems), kept as written: a
        # recipe's naming rule does not decide whether an artifact can be read
        fields = {k: v for k, v in self.output.items() if k != "name"}
        try:
            spec = TypeAdapter(OutputSpec).validate_python(fields)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ArtifactError(f"manifest field output.{where} is not a recipe output of this quantkit: "
                                f"{first['msg']}") from None
        return spec.model_copy(update={"name": self.output.get("name")})

    @property
    def gates(self) -> dict[str, float]:
        return dict(self.output.get("gates") or {})

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


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
        return format_named(self.manifest.format).targets(self.manifest, self.path)

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
            if (not p.is_dir() or p.is_symlink()) and rel not in listed and _is_content(rel):  # FIFOs, devices too
                problems.append(f"not in {MANIFEST_NAME}: {rel}")
            if p.name.lower().endswith(CODE_SUFFIXES) and not rel.startswith(SERVE_LOGS + "/"):
                problems.append(f"code file: {rel} (a quantkit artifact never carries code)")
        to_hash = []
        for rel, info in self.manifest.files.items():
            f = self.path / rel
            if f.is_symlink():
                problems.append(f"symlink: {rel} (an artifact holds regular files only)")
            elif not f.is_file():
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
        if m.format not in FORMATS:
            out.append(f"format {m.format!r} is none quantkit writes ({', '.join(FORMATS)})")
        elif format_of_method(str(m.output.get("method"))) not in (None, m.format):
            out.append(f"format {m.format!r} does not fit output.method {m.output.get('method')!r}")
        else:
            out += format_named(m.format).manifest_problems(m)
        if m.size_bytes != sum(f.bytes for f in m.files.values()):
            out.append(f"size_bytes {m.size_bytes} is not the sum of the files' sizes")
        for rel in m.files:
            if rel.startswith("/") or ".." in Path(rel).parts:
                out.append(f"files names a path outside the artifact: {rel!r}")
        # the recipe output (gates included) as quantize fingerprinted it: an edited threshold shows here
        if m.inputs.get("output") and m.inputs["output"] != json_digest(m.output):
            out.append("output (method, scheme or gates) differs from what quantize recorded in inputs.output: edited by hand")
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
    default_file_modes(folder)
    files = file_checksums(folder)
    manifest = Manifest.model_validate({**fields, "manifest_version": MANIFEST_VERSION, "files": files,
                                        "size_bytes": sum(f["bytes"] for f in files.values())})
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    return manifest


def default_file_modes(folder: Path) -> None:
    """Give every file of `folder` the mode a plain open() gives it under the process's umask: safetensors
    writes through a temporary file (mode 0600), which would leave the weights unreadable to the other users
    of a shared output root while every other file of the artifact is readable."""
    probe = folder / f".quantkit-mode-probe-{os.getpid()}"
    probe.write_bytes(b"")
    try:
        mode = probe.stat().st_mode & 0o777
    finally:
        probe.unlink()
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o777 != mode:
            p.chmod(mode)
