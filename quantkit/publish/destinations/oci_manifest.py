"""The documents an OCI registry holds for a model: CNCF ModelPack and OCI image media types, and the manifest,
descriptor and referrers-index models a pull reads a registry's answer into (bounded, so a hostile registry
cannot talk quantkit past them; a refusal names the fields)."""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator, model_validator

from quantkit.artifact import ATTESTATION_NAME
from quantkit.publish.bundle import CONFIG, DOC, LOG, WEIGHTS
from quantkit.publish.destinations.base import PushError

# CNCF ModelPack, modelpack/model-spec specs-go/v1 (read at d78bf3231b4f)
MODEL_ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
LAYER_TYPES = {
    WEIGHTS: "application/vnd.cncf.model.weight.v1.raw",
    CONFIG: "application/vnd.cncf.model.weight.config.v1.raw",
    DOC: "application/vnd.cncf.model.doc.v1.raw",
    LOG: "application/vnd.cncf.model.doc.v1.raw",
}
FILEPATH = "org.cncf.model.filepath"
# OCI image spec
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
# the attestation referrer: a DSSE envelope of an in-toto statement
ATTESTATION_ARTIFACT_TYPE = "application/vnd.in-toto+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"

# what quantkit accepts from a registry: bounds a hostile one cannot talk it past
MAX_BLOB = 1 << 40  # 1 TiB: more than any model file; a larger declared size is not a model
MAX_LAYERS = 10_000
MAX_NAME_BYTES = 255  # one path component, as Linux and macOS file systems take it


def content_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def layer_path_problem(rel: str) -> str | None:
    """Why `rel` is not a plain relative path a file may be written at inside the artifact folder (None: it is)."""
    if not rel:
        return "it is empty"
    if "\\" in rel:
        return "it has a backslash"
    if any(not c.isprintable() for c in rel):
        return "it has a control character"
    if rel.startswith("/"):
        return "it is absolute"
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "it has an empty, '.' or '..' component"
    if any(len(part.encode(errors="surrogatepass")) > MAX_NAME_BYTES for part in parts):
        return f"a component is over {MAX_NAME_BYTES} bytes"
    return None


class _Descriptor(BaseModel):
    # fields quantkit does not read (urls, platform, data) are allowed and kept when a referrers index is rewritten
    model_config = ConfigDict(extra="allow", frozen=True)


class Descriptor(_Descriptor):
    """An OCI content descriptor, as quantkit reads one."""

    mediaType: StrictStr = Field(min_length=1, max_length=255)
    digest: StrictStr = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: StrictInt = Field(ge=0, le=MAX_BLOB)
    artifactType: StrictStr | None = None
    annotations: dict[StrictStr, StrictStr] = Field(default_factory=dict)


class ConfigDescriptor(Descriptor):
    mediaType: Literal["application/vnd.cncf.model.config.v1+json"]


class Layer(Descriptor):
    """A model file: one of ModelPack's raw layer types, at the plain relative path its filepath annotation names."""

    @field_validator("mediaType")
    @classmethod
    def _raw_file(cls, value: str) -> str:
        if value not in LAYER_TYPES.values():
            raise ValueError(f"{value!r} is not a layer quantkit writes (one of {', '.join(sorted(set(LAYER_TYPES.values())))})")
        return value

    @model_validator(mode="after")
    def _plain_path(self) -> Layer:
        rel = self.annotations.get(FILEPATH)
        if rel is None:
            raise ValueError(f"no {FILEPATH} annotation (the file's path)")
        problem = layer_path_problem(rel)
        if problem:
            raise ValueError(f"{FILEPATH} {rel[:200]!r} is not a plain relative path inside the artifact folder: {problem}")
        return self

    @property
    def path(self) -> str:
        return self.annotations[FILEPATH]


class ManifestHead(BaseModel):
    """What tells an OCI image manifest apart before its layers are read."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    kind: ClassVar[str] = "OCI image manifest"
    schemaVersion: Literal[2]
    mediaType: Literal["application/vnd.oci.image.manifest.v1+json"]
    artifactType: StrictStr | None = None


class ModelManifest(ManifestHead):
    """A ModelPack model manifest, as quantkit pulls one: each layer a file at its own path."""

    kind: ClassVar[str] = "ModelPack model manifest"
    config: ConfigDescriptor
    layers: list[Layer] = Field(min_length=1, max_length=MAX_LAYERS)
    annotations: dict[StrictStr, StrictStr] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_paths(self) -> ModelManifest:
        seen: dict[str, str] = {}
        for layer in self.layers:
            key = layer.path.casefold()  # one file on a case-insensitive file system
            if key in seen:
                raise ValueError(f"two layers write {layer.path!r}" + (f" and {seen[key]!r}" if seen[key] != layer.path else ""))
            seen[key] = layer.path
        if ATTESTATION_NAME.casefold() in seen:
            raise ValueError(f"a layer writes {ATTESTATION_NAME!r}, the attestation's own path (it comes as a referrer)")
        for key, rel in seen.items():
            parent = key.rpartition("/")[0]
            while parent:
                if parent in seen:
                    raise ValueError(f"{seen[parent]!r} is a file and also the folder of {rel!r}")
                parent = parent.rpartition("/")[0]
        return self


class AttestationManifest(ManifestHead):
    kind: ClassVar[str] = "attestation manifest"
    layers: list[Descriptor] = Field(max_length=16)


class ReferrersIndex(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    kind: ClassVar[str] = "OCI referrers index"
    schemaVersion: Literal[2]
    mediaType: Literal["application/vnd.oci.image.index.v1+json"] | None = None
    manifests: list[Descriptor] = Field(default_factory=list, max_length=MAX_LAYERS)


def printable(text: str, limit: int = 200) -> str:
    """One line of what a registry said: no control characters (a terminal's escapes), no newlines."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:limit]


def validation_problems(e: ValidationError, limit: int = 3) -> str:
    found = e.errors(include_url=False)
    out = []
    for err in found[:limit]:
        loc = printable(".".join(str(x) for x in err["loc"]), 120)  # keys are the registry's text too
        msg = printable(err["msg"].removeprefix("Value error, "), 2000)
        shown = err["type"] not in ("missing", "json_invalid", "value_error") and loc
        got = f" (got {printable(repr(err['input']), 80)})" if shown else ""
        out.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
    more = len(found) - limit
    return "; ".join(out) + (f"; and {more} more" if more > 0 else "")


def parse_answer(model, raw: bytes, what: str):
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise PushError(f"{what} is not a valid {model.kind}: {validation_problems(e)}; refusing it") from None

