"""OCI registries: an artifact as a CNCF ModelPack OCI artifact (modelpack/model-spec v1 media types),
pushed and pulled through oras-py's registry client; the provenance attestation attached as a referrer.

Manifests are built here (oras' `push` cannot set `artifactType` or `subject`), blobs go through oras'
`blob_exists` / `put_upload` / `chunked_upload`, so a blob the registry has is never sent again.
Registries without the OCI 1.1 referrers API (CNCF distribution 2.8, Debian's `docker-registry`) get
the referrers tag schema: an image index tagged `sha256-<hex>` of the model manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator, model_validator

from quantkit.artifact import ATTESTATION_NAME
from quantkit.errors import QuantkitError
from quantkit.progress import Reporter
from quantkit.publish.bundle import CONFIG, DOC, LOG, WEIGHTS, Bundle, BundleFile
from quantkit.publish.destinations.base import Destination, PushError, PushOptions, PushResult

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

CHUNKED_ABOVE = 64 << 20  # oras' put_upload reads a whole file into memory: bigger blobs go in chunks
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
REFERENCE = re.compile(r"^oci://(?P<host>[A-Za-z0-9.\-]+(:\d+)?|\[[0-9a-fA-F:]+\](:\d+)?)/"
                       r"(?P<name>[a-z0-9]+(?:[._\-/][a-z0-9]+)*)(?::(?P<tag>[\w][\w.\-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))?$")

# what quantkit accepts from a registry: bounds a hostile one cannot talk it past
TIMEOUT_ENV = "QUANTKIT_REGISTRY_TIMEOUT"
DEFAULT_TIMEOUT = 60.0  # seconds to connect, and the longest silence while a response is read
MAX_BLOB = 1 << 40  # 1 TiB: more than any model file; a larger declared size is not a model
MAX_LAYERS = 10_000
MAX_MANIFEST = 4 << 20  # the OCI distribution spec's manifest size every registry must accept
MAX_ATTESTATION = 64 << 20  # a DSSE envelope of a few hundred file digests is some KB
MAX_ERROR_TEXT = 1 << 10  # of an error answer, the part that is quoted
BLOB_CHUNK = 1 << 20
MAX_NAME_BYTES = 255  # one path component, as Linux and macOS file systems take it
PUSH_HINT = "blobs already uploaded stay in the registry: run the same command again to finish (they are not sent again)"
PULL_HINT = "nothing was kept: run the same command again"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def registry_timeout() -> float:
    """$QUANTKIT_REGISTRY_TIMEOUT seconds, else DEFAULT_TIMEOUT: the connect and the read timeout of every request."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise QuantkitError(f"{TIMEOUT_ENV}={text!r}: expected a number of seconds > 0 (default {DEFAULT_TIMEOUT:g})")
    return value


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


def _printable(text: str, limit: int = 200) -> str:
    """One line of what a registry said: no control characters (a terminal's escapes), no newlines."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:limit]


def _problems(e: ValidationError, limit: int = 3) -> str:
    found = e.errors(include_url=False)
    out = []
    for err in found[:limit]:
        loc = _printable(".".join(str(x) for x in err["loc"]), 120)  # keys are the registry's text too
        msg = _printable(err["msg"].removeprefix("Value error, "), 2000)
        shown = err["type"] not in ("missing", "json_invalid", "value_error") and loc
        got = f" (got {_printable(repr(err['input']), 80)})" if shown else ""
        out.append(f"{loc}: {msg}{got}" if loc else f"{msg}{got}")
    more = len(found) - limit
    return "; ".join(out) + (f"; and {more} more" if more > 0 else "")


def _parse(model, raw: bytes, what: str):
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise PushError(f"{what} is not a valid {model.kind}: {_problems(e)}; refusing it") from None


def _is_timeout(e: BaseException) -> bool:
    import requests
    from urllib3.exceptions import ReadTimeoutError

    # a read timeout while a body streams comes as requests' ConnectionError around urllib3's ReadTimeoutError
    return isinstance(e, requests.Timeout) or any(isinstance(a, ReadTimeoutError) for a in e.args)


class OCIRegistry(Destination):
    kind = "oci"

    def __init__(self, target: str):
        m = REFERENCE.match(target)
        if not m:
            raise QuantkitError(f"--to {target!r}: expected oci://HOST[:PORT]/NAME[:TAG|@sha256:DIGEST] "
                                "(NAME in lowercase letters, digits and . _ - /)")
        self.host, self.name = m["host"], m["name"]
        self.tag, self.pinned = m["tag"] or "latest", m["digest"]
        self.ref = target if (m["tag"] or m["digest"]) else f"{target}:latest"
        self.timeout = registry_timeout()
        self._hint = PUSH_HINT  # what a failure tells the user to do: set by push and download
        self._registry = None

    # oras-py ---------------------------------------------------------------------------------
    @property
    def registry(self):
        if self._registry is None:
            import oras.provider
            import requests
            from requests.adapters import HTTPAdapter

            timeout = self.timeout

            class TimeoutAdapter(HTTPAdapter):
                # requests waits forever by default; every request of the session (the token realm's too) gets one
                def send(self, request, **kwargs):
                    if kwargs.get("timeout") is None:
                        kwargs["timeout"] = timeout
                    return super().send(request, **kwargs)

            plain = getattr(oras.provider.Registry.do_request, "__wrapped__", oras.provider.Registry.do_request)

            class Registry(oras.provider.Registry):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, **kwargs)
                    adapter = TimeoutAdapter()
                    self.session.mount("http://", adapter)
                    self.session.mount("https://", adapter)

                # oras retries every request 5 times over ~2 minutes; a dead registry should fail in seconds,
                # and a silent one after one timeout, not after several
                def do_request(self, *args, **kwargs):
                    try:
                        return plain(self, *args, **kwargs)
                    except requests.Timeout:
                        raise
                    except requests.ConnectionError:
                        time.sleep(1)
                        return plain(self, *args, **kwargs)

            # plain HTTP only on this machine's loopback; any other registry is spoken to over TLS
            insecure = self.host.split(":")[0] in LOOPBACK or self.host.startswith("[::1]")
            self._registry = Registry(hostname=self.host, insecure=insecure)
        return self._registry

    def _container(self, ref: str):
        return self.registry.get_container(f"{self.name}{'@' if ref.startswith('sha256:') else ':'}{ref}")

    def _url(self, ref: str) -> str:
        return f"{self.registry.prefix}://{self._container(ref).manifest_url(ref)}"

    def _request(self, url: str, method: str, what: str, ok: tuple[int, ...], limit: int = MAX_MANIFEST, **kwargs):
        """One request; returns (response, body), a body in `ok` read up to `limit` bytes (more is refused)."""
        try:
            with contextlib.closing(self.registry.do_request(url, method, stream=True, **kwargs)) as resp:
                if resp.status_code not in ok:
                    text = _read_body(resp, MAX_ERROR_TEXT, what, truncate=True).decode(errors="replace")
                    raise PushError(f"{what} at {self.describe()}: the registry answered {resp.status_code} "
                                    f"{_printable(text)}".rstrip())
                return resp, _read_body(resp, limit, f"{what} at {self.describe()}")
        except PushError:
            raise
        except Exception as e:  # requests' connection errors and timeouts, oras' ValueError on auth
            raise self._fail(what, e) from None

    def _fail(self, what: str, e: Exception) -> PushError:
        if _is_timeout(e):
            return PushError(f"{what} at {self.describe()} failed: the registry sent nothing for {self.timeout:g} s "
                             f"(${TIMEOUT_ENV} sets the timeout); {self._hint}")
        return PushError(f"{what} at {self.describe()} failed ({type(e).__name__}: {_printable(str(e), 300)}); {self._hint}")

    def _get_manifest(self, ref: str, accept: tuple[str, ...]) -> bytes | None:
        """The manifest's bytes as the registry sent them (their sha256 is its digest); None when there is none."""
        resp, body = self._request(self._url(ref), "GET", f"read {ref}", (200, 404), headers={"Accept": ", ".join(accept)})
        return None if resp.status_code == 404 else body

    def _put_manifest(self, ref: str, body: bytes, media_type: str):
        resp, _ = self._request(self._url(ref), "PUT", f"write manifest {ref}", (201,), data=body,
                                headers={"Content-Type": media_type})
        returned = resp.headers.get("Docker-Content-Digest")
        if returned and returned != _digest(body):
            raise PushError(f"{self.describe()} stored manifest {ref} as {_printable(returned)}, not {_digest(body)}")
        return resp

    def _upload(self, desc: dict, path: Path) -> bool:
        """Upload one blob unless the registry has it; True when bytes were sent."""
        container = self._container(self.tag)
        try:
            if self.registry.blob_exists(desc, container):
                return False
            if desc["size"] > CHUNKED_ABOVE:
                resp = self.registry.chunked_upload(str(path), container, desc, chunk_size=CHUNKED_ABOVE)
            else:
                resp = self.registry.put_upload(str(path), container, desc)
        except PushError:
            raise
        except Exception as e:
            raise self._fail(f"upload of {desc['digest'][:19]}", e) from None
        if resp.status_code != 201:
            raise PushError(f"upload of {desc['digest'][:19]} to {self.describe()}: the registry answered {resp.status_code}")
        return True

    # push --------------------------------------------------------------------------------------
    def push(self, bundle: Bundle, options: PushOptions, reporter: Reporter) -> PushResult:
        if options.private or options.revision or options.create_pr or options.commit_message:
            raise QuantkitError("--private, --revision, --create-pr and --commit-message are Hugging Face Hub options; "
                                "an OCI destination takes its tag from --to")
        if self.pinned:
            raise QuantkitError(f"--to {self.ref}: push to a tag, not a digest (the digest is what the push makes)")
        self._hint = PUSH_HINT
        layers_files = [f for f in bundle.files if f.path != ATTESTATION_NAME]
        sent, skipped = 0, []
        layers = []
        with tempfile.TemporaryDirectory(prefix="quantkit-oci-") as tmp:
            with reporter.task(f"upload {len(layers_files)} blobs to {self.describe()}", total=bundle.size) as task:
                for f in layers_files:
                    desc = {"mediaType": LAYER_TYPES[f.role], "digest": f"sha256:{f.sha256}", "size": f.size,
                            "annotations": {FILEPATH: f.path}}
                    if self._upload(desc, _on_disk(f, Path(tmp))):
                        sent += f.size
                    else:
                        skipped.append(f.path)
                    task.advance(f.size)
                    layers.append(desc)
            config = _dumps(model_config(bundle, layers))
            config_desc = self._blob(config, MODEL_CONFIG, Path(tmp))
            manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": MODEL_ARTIFACT_TYPE,
                        "config": config_desc, "layers": layers, "annotations": annotations(bundle)}
            body = _dumps(manifest)
            self._put_manifest(self.tag, body, MANIFEST)
            digest = _digest(body)
            attestation = bundle.file(ATTESTATION_NAME)
            how = None
            if attestation is not None:
                with reporter.task(f"attach {ATTESTATION_NAME} to {digest[:19]}"):
                    how = self._attach(digest, len(body), attestation.read(), Path(tmp))
        return PushResult(self.ref, url=f"{self.ref.rsplit(':', 1)[0] if not self.pinned else self.ref}@{digest}",
                          digest=digest, sent_bytes=sent, skipped=skipped,
                          details={"manifest": manifest, "attestation": how})

    def _blob(self, data: bytes, media_type: str, tmp: Path) -> dict:
        desc = {"mediaType": media_type, "digest": _digest(data), "size": len(data)}
        path = tmp / desc["digest"].replace(":", "-")
        path.write_bytes(data)
        self._upload(desc, path)
        return desc

    def _attach(self, subject: str, subject_size: int, envelope: bytes, tmp: Path) -> str:
        """Push the attestation as a referrer of `subject`; returns how the registry indexes it."""
        self._blob(EMPTY_BLOB, EMPTY, tmp)
        layer = self._blob(envelope, DSSE_ENVELOPE, tmp)
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": ATTESTATION_ARTIFACT_TYPE,
                    "config": {"mediaType": EMPTY, "digest": _digest(EMPTY_BLOB), "size": len(EMPTY_BLOB)},
                    "layers": [layer], "subject": {"mediaType": MANIFEST, "digest": subject, "size": subject_size},
                    "annotations": {"org.opencontainers.image.title": ATTESTATION_NAME}}
        body = _dumps(manifest)
        digest = _digest(body)
        resp = self._put_manifest(digest, body, MANIFEST)
        if resp.headers.get("OCI-Subject") == subject:
            return "referrers API"
        # the referrers tag schema (OCI distribution spec 1.1): an index of referrers tagged sha256-<hex>
        tag = subject.replace(":", "-")
        raw = self._get_manifest(tag, (INDEX,))
        found = _parse(ReferrersIndex, raw, f"{self.describe()}: referrers index {tag[:19]}…").manifests if raw else []
        if not any(m.digest == digest for m in found):
            entries = [m.model_dump(exclude_unset=True) for m in found]  # other referrers kept as they were
            entries.append({"mediaType": MANIFEST, "digest": digest, "size": len(body),
                            "artifactType": ATTESTATION_ARTIFACT_TYPE, "annotations": manifest["annotations"]})
            self._put_manifest(tag, _dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}), INDEX)
        return f"referrers tag schema ({tag[:19]}…)"

    # pull --------------------------------------------------------------------------------------
    def referrers(self, digest: str) -> list[Descriptor]:
        container = self._container(digest)
        url = f"{self.registry.prefix}://{container.registry}/v2/{container.api_prefix}/referrers/{digest}"
        resp, body = self._request(url, "GET", "list referrers", (200, 404), headers={"Accept": INDEX})
        what = f"{self.ref}: the referrers of {digest[:19]}"
        if resp.status_code == 200:
            found = _parse(ReferrersIndex, body, what).manifests
        else:  # no referrers API: the tag schema
            raw = self._get_manifest(digest.replace(":", "-"), (INDEX,))
            found = _parse(ReferrersIndex, raw, what).manifests if raw is not None else []
        return [m for m in found if m.artifactType == ATTESTATION_ARTIFACT_TYPE]

    def download(self, folder: Path, reporter: Reporter) -> dict:
        """Every layer into `folder` (a folder quantkit made, e.g. pull's staging folder), each checked against its
        declared size while it streams and against its digest before it is renamed into place."""
        self._hint = PULL_HINT
        ref = self.pinned or self.tag
        raw = self._get_manifest(ref, (MANIFEST,))
        if raw is None:
            raise PushError(f"{self.ref}: not found in the registry")
        digest = _digest(raw)
        if self.pinned and digest != self.pinned:
            raise PushError(f"{self.ref}: the registry returned a manifest with digest {digest}")
        what = f"{self.ref}: the manifest"
        head = _parse(ManifestHead, raw, what)
        if head.artifactType != MODEL_ARTIFACT_TYPE:
            raise PushError(f"{self.ref} is not a ModelPack model artifact "
                            f"(artifactType {_printable(repr(head.artifactType), 120)}, not {MODEL_ARTIFACT_TYPE!r})")
        manifest = _parse(ModelManifest, raw, what)
        total = sum(layer.size for layer in manifest.layers)
        free = shutil.disk_usage(folder).free
        if total > free:
            from quantkit.files import human_bytes

            raise QuantkitError(f"{self.ref}: its layers declare {human_bytes(total)} and {folder} has {human_bytes(free)} "
                                "free; make room, or pull to another disk")
        with reporter.task(f"download {len(manifest.layers)} blobs from {self.describe()}", total=total) as task:
            for layer in manifest.layers:
                self._fetch(layer, folder / layer.path)  # a plain relative path (Layer): inside `folder`
                task.advance(layer.size)
        attestations = self.referrers(digest)
        if attestations:  # the newest attachment is the one of this push
            newest = attestations[-1]
            raw_att = self._get_manifest(newest.digest, (MANIFEST,))
            if raw_att is None or _digest(raw_att) != newest.digest:
                raise PushError(f"{self.ref}: the attestation {newest.digest[:19]} its referrers list is "
                                + ("missing" if raw_att is None else f"answered with a manifest of digest {_digest(raw_att)}"))
            att_manifest = _parse(AttestationManifest, raw_att, f"{self.ref}: the attestation manifest")
            layer = next((x for x in att_manifest.layers if x.mediaType == DSSE_ENVELOPE), None)
            if layer is not None:
                self._fetch(layer, folder / ATTESTATION_NAME, limit=MAX_ATTESTATION)
        return {"ref": self.ref, "digest": digest, "manifest": json.loads(raw), "attestations": len(attestations)}

    def _fetch(self, desc: Descriptor, out: Path, limit: int = MAX_BLOB) -> None:
        """Stream one blob into a hidden sibling of `out`, never a byte past its declared size, and rename it to
        `out` once size and digest match. `out` is inside the folder being filled; so is the sibling."""
        what = f"blob {desc.digest[:19]} ({out.name})"
        if desc.size > limit:
            raise PushError(f"{self.ref}: {what} declares {desc.size} bytes, over the {limit} quantkit takes for it")
        import requests

        part = out.parent / f".{out.name}.part-{uuid.uuid4().hex[:8]}"
        url = f"{self.registry.prefix}://{self._container(desc.digest).get_blob_url(desc.digest)}"
        h = hashlib.sha256()
        got = 0
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            # the digest is of the stored bytes: no transfer compression
            resp = self.registry.do_request(url, "GET", headers={**self.registry.headers, "Accept-Encoding": "identity"},
                                            stream=True)
            with contextlib.closing(resp):
                if resp.status_code != 200:
                    raise PushError(f"{self.ref}: {what}: the registry answered {resp.status_code}")
                length = resp.headers.get("Content-Length", "")
                if length.isdigit() and int(length) != desc.size:
                    raise PushError(f"{self.ref}: {what}: the registry announces {int(length)} bytes, the manifest "
                                    f"declares {desc.size}; refusing it")
                with open(part, "xb") as f:
                    for chunk in resp.iter_content(chunk_size=BLOB_CHUNK):
                        got += len(chunk)
                        if got > desc.size:
                            raise PushError(f"{self.ref}: {what}: the registry sent more than the {desc.size} bytes the "
                                            "manifest declares; stopped reading")
                        h.update(chunk)
                        f.write(chunk)
            if got != desc.size:
                raise PushError(f"{self.ref}: {what}: the registry sent {got} of its {desc.size} bytes")
            if "sha256:" + h.hexdigest() != desc.digest:
                raise PushError(f"{self.ref}: {what} does not match its digest")
            os.replace(part, out)
        except QuantkitError:  # PushError among them
            raise
        except requests.RequestException as e:  # before OSError: requests' errors are OSErrors
            raise self._fail(f"download of {desc.digest[:19]}", e) from None
        except OSError as e:
            raise QuantkitError(f"cannot write {out}: {e.strerror or e}") from None
        except Exception as e:  # oras' ValueError on auth
            raise self._fail(f"download of {desc.digest[:19]}", e) from None
        finally:
            part.unlink(missing_ok=True)


def _read_body(resp, limit: int, what: str, truncate: bool = False) -> bytes:
    """A response body of at most `limit` bytes; a longer one is cut (`truncate`) or refused."""
    body = bytearray()
    for chunk in resp.iter_content(chunk_size=64 << 10):
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise PushError(f"{what}: the registry's answer is over {limit} bytes, the most quantkit reads; refusing it")
    return bytes(body)


def _on_disk(f: BundleFile, tmp: Path) -> Path:
    if f.source is not None:
        return f.source
    path = tmp / f.sha256
    path.write_bytes(f.data)
    return path


def model_config(bundle: Bundle, layers: list[dict]) -> dict:
    """The ModelPack model config (its schema allows no other fields)."""
    m = bundle.artifact.manifest
    descriptor = {"name": m.name, "createdAt": m.created, "title": m.name, "description": m.description}
    if bundle.license:
        descriptor["licenses"] = [bundle.license]
    config = {"format": "gguf" if m.format == "gguf" else "safetensors", "quantization": m.method, "precision": m.scheme}
    return {"descriptor": descriptor, "config": config,
            "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]}}


def annotations(bundle: Bundle) -> dict[str, str]:
    m = bundle.artifact.manifest
    from quantkit.publish.card import base_model_id

    return {
        "org.opencontainers.image.title": m.name,
        "org.opencontainers.image.created": m.created,
        "org.opencontainers.image.description": m.description,
        "dev.quantkit.base-model": base_model_id(bundle.artifact) or m.base_model.source,
        "dev.quantkit.base-model.fingerprint": m.base_model.fingerprint,
        "dev.quantkit.quantization.method": m.method,
        "dev.quantkit.quantization.scheme": ",".join(t.scheme for t in bundle.artifact.targets()),
        "dev.quantkit.format": m.format,
    }
