"""OCI registries: an artifact as a CNCF ModelPack OCI artifact (modelpack/model-spec v1 media types),
pushed and pulled through oras-py's registry client; the provenance attestation attached as a referrer.

Manifests are built here (oras' `push` cannot set `artifactType` or `subject`), blobs go through oras'
`blob_exists` / `put_upload` / `chunked_upload`, so a blob the registry has is never sent again.
Registries without the OCI 1.1 referrers API (CNCF distribution 2.8, Debian's `docker-registry`) get
the referrers tag schema: an image index tagged `sha256-<hex>` of the model manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

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


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


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
        self._registry = None

    # oras-py ---------------------------------------------------------------------------------
    @property
    def registry(self):
        if self._registry is None:
            import oras.provider  # before oras.decorator: oras has a circular import the other way round
            from oras.decorator import retry

            class Registry(oras.provider.Registry):
                # oras retries every request 5 times over ~2 minutes; a dead registry should fail in seconds
                do_request = retry(attempts=2, timeout=0)(getattr(oras.provider.Registry.do_request, "__wrapped__",
                                                                 oras.provider.Registry.do_request))

            # plain HTTP only on this machine's loopback; any other registry is spoken to over TLS
            insecure = self.host.split(":")[0] in LOOPBACK or self.host.startswith("[::1]")
            self._registry = Registry(hostname=self.host, insecure=insecure)
        return self._registry

    def _container(self, ref: str):
        return self.registry.get_container(f"{self.name}{'@' if ref.startswith('sha256:') else ':'}{ref}")

    def _url(self, ref: str) -> str:
        return f"{self.registry.prefix}://{self._container(ref).manifest_url(ref)}"

    def _request(self, url: str, method: str, what: str, ok: tuple[int, ...], **kwargs):
        try:
            resp = self.registry.do_request(url, method, **kwargs)
        except Exception as e:  # requests' connection errors, oras' ValueError on auth
            raise self._fail(what, e) from None
        if resp.status_code not in ok:
            raise PushError(f"{what} at {self.describe()}: the registry answered {resp.status_code} {resp.text[:200].strip()}")
        return resp

    def _fail(self, what: str, e: Exception) -> PushError:
        return PushError(f"{what} at {self.describe()} failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
                         "blobs already uploaded stay in the registry: run the same command again to finish "
                         "(they are not sent again)")

    def _get_manifest(self, ref: str, accept: tuple[str, ...]) -> tuple[dict | None, bytes | None]:
        resp = self._request(self._url(ref), "GET", f"read {ref}", (200, 404), headers={"Accept": ", ".join(accept)})
        if resp.status_code == 404:
            return None, None
        return resp.json(), resp.content

    def _put_manifest(self, ref: str, body: bytes, media_type: str):
        resp = self._request(self._url(ref), "PUT", f"write manifest {ref}", (201,), data=body,
                             headers={"Content-Type": media_type})
        returned = resp.headers.get("Docker-Content-Digest")
        if returned and returned != _digest(body):
            raise PushError(f"{self.describe()} stored manifest {ref} as {returned}, not {_digest(body)}")
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
        index, _ = self._get_manifest(tag, (INDEX,))
        index = index or {"schemaVersion": 2, "mediaType": INDEX, "manifests": []}
        if not any(m.get("digest") == digest for m in index["manifests"]):
            index["manifests"].append({"mediaType": MANIFEST, "digest": digest, "size": len(body),
                                       "artifactType": ATTESTATION_ARTIFACT_TYPE,
                                       "annotations": manifest["annotations"]})
            self._put_manifest(tag, _dumps(index), INDEX)
        return f"referrers tag schema ({tag[:19]}…)"

    # pull --------------------------------------------------------------------------------------
    def referrers(self, digest: str) -> list[dict]:
        container = self._container(digest)
        url = f"{self.registry.prefix}://{container.registry}/v2/{container.api_prefix}/referrers/{digest}"
        resp = self._request(url, "GET", "list referrers", (200, 404), headers={"Accept": INDEX})
        if resp.status_code == 200:
            found = resp.json().get("manifests", [])
        else:
            index, _ = self._get_manifest(digest.replace(":", "-"), (INDEX,))
            found = (index or {}).get("manifests", [])
        return [m for m in found if m.get("artifactType") == ATTESTATION_ARTIFACT_TYPE]

    def download(self, folder: Path, reporter: Reporter) -> dict:
        ref = self.pinned or self.tag
        manifest, raw = self._get_manifest(ref, (MANIFEST,))
        if manifest is None:
            raise PushError(f"{self.ref}: not found in the registry")
        if manifest.get("artifactType") != MODEL_ARTIFACT_TYPE:
            raise PushError(f"{self.ref} is not a ModelPack model artifact (artifactType {manifest.get('artifactType')!r})")
        digest = _digest(raw)
        if self.pinned and digest != self.pinned:
            raise PushError(f"{self.ref}: the registry returned a manifest with digest {digest}")
        total = sum(layer["size"] for layer in manifest["layers"])
        with reporter.task(f"download {len(manifest['layers'])} blobs from {self.describe()}", total=total) as task:
            for layer in manifest["layers"]:
                rel = (layer.get("annotations") or {}).get(FILEPATH)
                if not rel:
                    raise PushError(f"{self.ref}: layer {layer['digest'][:19]} has no {FILEPATH} annotation")
                self._fetch(layer, _inside(folder, rel))
                task.advance(layer["size"])
        attestations = self.referrers(digest)
        if attestations:  # the newest attachment is the one of this push
            att_manifest, _ = self._get_manifest(attestations[-1]["digest"], (MANIFEST,))
            layer = next((x for x in att_manifest.get("layers", []) if x.get("mediaType") == DSSE_ENVELOPE), None)
            if layer is not None:
                self._fetch(layer, folder / ATTESTATION_NAME)
        return {"ref": self.ref, "digest": digest, "manifest": manifest, "attestations": len(attestations)}

    def _fetch(self, desc: dict, out: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        part = out.with_name(out.name + ".part")
        try:
            with self.registry.get_blob(self._container(desc["digest"]), desc["digest"], stream=True) as resp:
                if resp.status_code != 200:
                    raise PushError(f"{self.ref}: blob {desc['digest'][:19]}: the registry answered {resp.status_code}")
                with open(part, "wb") as f:
                    for chunk in resp.iter_content(chunk_size=1 << 20):
                        h.update(chunk)
                        f.write(chunk)
        except PushError:
            part.unlink(missing_ok=True)
            raise
        except Exception as e:
            part.unlink(missing_ok=True)
            raise self._fail(f"download of {desc['digest'][:19]}", e) from None
        if "sha256:" + h.hexdigest() != desc["digest"] or part.stat().st_size != desc["size"]:
            part.unlink()
            raise PushError(f"{self.ref}: blob {desc['digest'][:19]} ({out.name}) does not match its digest")
        os.replace(part, out)


def _inside(folder: Path, rel: str) -> Path:
    """`folder/rel`, refusing a path that would leave `folder` (a hostile filepath annotation)."""
    out = (folder / rel).resolve()
    if Path(rel).is_absolute() or not out.is_relative_to(folder.resolve()):
        raise PushError(f"a layer's {FILEPATH} {rel!r} points outside the artifact folder; refusing it")
    return out


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
