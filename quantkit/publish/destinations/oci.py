"""OCI registries: an artifact as a CNCF ModelPack OCI artifact (modelpack/model-spec v1 media types),
pushed and pulled through oras-py's registry client; the provenance attestation attached as a referrer.

Manifests are built here (oras' `push` cannot set `artifactType` or `subject`), blobs go through oras'
`blob_exists` / `put_upload` / `chunked_upload`, so a blob the registry has is never sent again.
Registries without the OCI 1.1 referrers API (CNCF distribution 2.8, Debian's `docker-registry`) get
the referrers tag schema: an image index tagged `sha256-<hex>` of the model manifest.

One module because OCIRegistry is one Destination whose push and pull share its requests, failure messages
and hints; beside it are oci_manifest (the media types and the manifest models a pull reads) and
oci_transport (oras' client with timeouts, bounded bodies).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from quantkit.artifact import ATTESTATION_NAME
from quantkit.errors import QuantkitError
from quantkit.formats import format_named
from quantkit.progress import Reporter
from quantkit.publish.bundle import Bundle, BundleFile
from quantkit.publish.destinations.base import Destination, PushError, PushOptions, PushResult
from quantkit.publish.destinations.oci_manifest import (
    ATTESTATION_ARTIFACT_TYPE,
    DSSE_ENVELOPE,
    EMPTY,
    EMPTY_BLOB,
    FILEPATH,
    INDEX,
    LAYER_TYPES,
    MANIFEST,
    MAX_BLOB,
    MODEL_ARTIFACT_TYPE,
    MODEL_CONFIG,
    AttestationManifest,
    Descriptor,
    ManifestHead,
    ModelManifest,
    ReferrersIndex,
    canonical_json,
    content_digest,
    parse_answer,
    printable,
)
from quantkit.publish.destinations.oci_transport import TIMEOUT_ENV, is_timeout, oras_registry, read_body, registry_timeout

CHUNKED_ABOVE = 64 << 20  # oras' put_upload reads a whole file into memory: bigger blobs go in chunks
REFERENCE = re.compile(r"^oci://(?P<host>[A-Za-z0-9.\-]+(:\d+)?|\[[0-9a-fA-F:]+\](:\d+)?)/"
                       r"(?P<name>[a-z0-9]+(?:[._\-/][a-z0-9]+)*)(?::(?P<tag>[\w][\w.\-]{0,127})|@(?P<digest>sha256:[0-9a-f]{64}))?$")
MAX_MANIFEST = 4 << 20  # the OCI distribution spec's manifest size every registry must accept
MAX_ATTESTATION = 64 << 20  # a DSSE envelope of a few hundred file digests is some KB
MAX_ERROR_TEXT = 1 << 10  # of an error answer, the part that is quoted
BLOB_CHUNK = 1 << 20
PUSH_HINT = "blobs already uploaded stay in the registry: run the same command again to finish (they are not sent again)"
PULL_HINT = "nothing was kept: run the same command again"


class OCIRegistry(Destination):
    kind = "oci"
    pulled_before_run = True

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
            self._registry = oras_registry(self.host, self.timeout)
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
                    text = read_body(resp, MAX_ERROR_TEXT, what, truncate=True).decode(errors="replace")
                    raise PushError(f"{what} at {self.describe()}: the registry answered {resp.status_code} "
                                    f"{printable(text)}".rstrip())
                return resp, read_body(resp, limit, f"{what} at {self.describe()}")
        except PushError:
            raise
        except Exception as e:  # requests' connection errors and timeouts, oras' ValueError on auth
            raise self._fail(what, e) from None

    def _fail(self, what: str, e: Exception) -> PushError:
        if is_timeout(e):
            return PushError(f"{what} at {self.describe()} failed: the registry sent nothing for {self.timeout:g} s "
                             f"(${TIMEOUT_ENV} sets the timeout); {self._hint}")
        return PushError(f"{what} at {self.describe()} failed ({type(e).__name__}: {printable(str(e), 300)}); {self._hint}")

    def _get_manifest(self, ref: str, accept: tuple[str, ...]) -> bytes | None:
        """The manifest's bytes as the registry sent them (their sha256 is its digest); None when there is none."""
        resp, body = self._request(self._url(ref), "GET", f"read {ref}", (200, 404), headers={"Accept": ", ".join(accept)})
        return None if resp.status_code == 404 else body

    def _put_manifest(self, ref: str, body: bytes, media_type: str):
        resp, _ = self._request(self._url(ref), "PUT", f"write manifest {ref}", (201,), data=body,
                                headers={"Content-Type": media_type})
        returned = resp.headers.get("Docker-Content-Digest")
        if returned and returned != content_digest(body):
            raise PushError(f"{self.describe()} stored manifest {ref} as {printable(returned)}, not {content_digest(body)}")
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
            config = canonical_json(model_config(bundle, layers))
            config_desc = self._blob(config, MODEL_CONFIG, Path(tmp))
            manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": MODEL_ARTIFACT_TYPE,
                        "config": config_desc, "layers": layers, "annotations": annotations(bundle)}
            body = canonical_json(manifest)
            self._put_manifest(self.tag, body, MANIFEST)
            digest = content_digest(body)
            attestation = bundle.file(ATTESTATION_NAME)
            how = None
            if attestation is not None:
                with reporter.task(f"attach {ATTESTATION_NAME} to {digest[:19]}"):
                    how = self._attach(digest, len(body), attestation.read(), Path(tmp))
        return PushResult(self.ref, url=f"{self.ref.rsplit(':', 1)[0] if not self.pinned else self.ref}@{digest}",
                          digest=digest, sent_bytes=sent, skipped=skipped,
                          details={"manifest": manifest, "attestation": how})

    def _blob(self, data: bytes, media_type: str, tmp: Path) -> dict:
        desc = {"mediaType": media_type, "digest": content_digest(data), "size": len(data)}
        path = tmp / desc["digest"].replace(":", "-")
        path.write_bytes(data)
        self._upload(desc, path)
        return desc

    def _attach(self, subject: str, subject_size: int, envelope: bytes, tmp: Path) -> str:
        """Push the attestation as a referrer of `subject`; returns how the registry indexes it."""
        self._blob(EMPTY_BLOB, EMPTY, tmp)
        layer = self._blob(envelope, DSSE_ENVELOPE, tmp)
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "artifactType": ATTESTATION_ARTIFACT_TYPE,
                    "config": {"mediaType": EMPTY, "digest": content_digest(EMPTY_BLOB), "size": len(EMPTY_BLOB)},
                    "layers": [layer], "subject": {"mediaType": MANIFEST, "digest": subject, "size": subject_size},
                    "annotations": {"org.opencontainers.image.title": ATTESTATION_NAME}}
        body = canonical_json(manifest)
        digest = content_digest(body)
        resp = self._put_manifest(digest, body, MANIFEST)
        if resp.headers.get("OCI-Subject") == subject:
            return "referrers API"
        # the referrers tag schema (OCI distribution spec 1.1): an index of referrers tagged sha256-<hex>
        tag = subject.replace(":", "-")
        raw = self._get_manifest(tag, (INDEX,))
        found = parse_answer(ReferrersIndex, raw, f"{self.describe()}: referrers index {tag[:19]}…").manifests if raw else []
        if not any(m.digest == digest for m in found):
            entries = [m.model_dump(exclude_unset=True) for m in found]  # other referrers kept as they were
            entries.append({"mediaType": MANIFEST, "digest": digest, "size": len(body),
                            "artifactType": ATTESTATION_ARTIFACT_TYPE, "annotations": manifest["annotations"]})
            self._put_manifest(tag, canonical_json({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}), INDEX)
        return f"referrers tag schema ({tag[:19]}…)"

    # pull --------------------------------------------------------------------------------------
    def referrers(self, digest: str) -> list[Descriptor]:
        container = self._container(digest)
        url = f"{self.registry.prefix}://{container.registry}/v2/{container.api_prefix}/referrers/{digest}"
        resp, body = self._request(url, "GET", "list referrers", (200, 404), headers={"Accept": INDEX})
        what = f"{self.ref}: the referrers of {digest[:19]}"
        if resp.status_code == 200:
            found = parse_answer(ReferrersIndex, body, what).manifests
        else:  # no referrers API: the tag schema
            raw = self._get_manifest(digest.replace(":", "-"), (INDEX,))
            found = parse_answer(ReferrersIndex, raw, what).manifests if raw is not None else []
        return [m for m in found if m.artifactType == ATTESTATION_ARTIFACT_TYPE]

    def download(self, folder: Path, reporter: Reporter) -> dict:
        """Every layer into `folder` (a folder quantkit made, e.g. pull's staging folder), each checked against its
        declared size while it streams and against its digest before it is renamed into place."""
        self._hint = PULL_HINT
        ref = self.pinned or self.tag
        raw = self._get_manifest(ref, (MANIFEST,))
        if raw is None:
            raise PushError(f"{self.ref}: not found in the registry")
        digest = content_digest(raw)
        if self.pinned and digest != self.pinned:
            raise PushError(f"{self.ref}: the registry returned a manifest with digest {digest}")
        what = f"{self.ref}: the manifest"
        head = parse_answer(ManifestHead, raw, what)
        if head.artifactType != MODEL_ARTIFACT_TYPE:
            raise PushError(f"{self.ref} is not a ModelPack model artifact "
                            f"(artifactType {printable(repr(head.artifactType), 120)}, not {MODEL_ARTIFACT_TYPE!r})")
        manifest = parse_answer(ModelManifest, raw, what)
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
            if raw_att is None or content_digest(raw_att) != newest.digest:
                got = "missing" if raw_att is None else f"answered with a manifest of digest {content_digest(raw_att)}"
                raise PushError(f"{self.ref}: the attestation {newest.digest[:19]} its referrers list is " + got)
            att_manifest = parse_answer(AttestationManifest, raw_att, f"{self.ref}: the attestation manifest")
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
    config = {"format": format_named(m.format).oci_format, "quantization": m.method, "precision": m.scheme}
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
