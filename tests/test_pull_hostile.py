"""`quantkit pull` from a hostile OCI registry: an in-memory registry on loopback (http.server in a thread)
that quantkit pushes a real artifact to, then serves malformed manifests, hostile layer paths, blobs longer
than declared and stalls. Every failure is one quantkit error; nothing is written outside the destination,
the destination is not created, no `.part` file is left."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest
from conftest import run_cli, tiny_recipe_text

import quantkit
from quantkit.artifact import ATTESTATION_NAME
from quantkit.errors import QuantkitError
from quantkit.publish.destinations import PushError
from quantkit.publish.destinations.oci import FILEPATH, MAX_BLOB, MAX_MANIFEST, OCIRegistry
from quantkit.publish.verbs import PushSettings, pull

pytestmark = pytest.mark.integration

TAG = "w8a16"
MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<ref>[^/]+)$")
UPLOAD_PATH = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<session>[0-9a-f]*)$")


class FakeRegistry:
    """Enough of the OCI distribution API for quantkit's push and pull, in memory. A test replaces what it
    serves: `manifests`/`blobs` directly, or a path's whole answer through `routes`."""

    def __init__(self, blobs: dict[str, bytes] | None = None, manifests: dict[str, bytes] | None = None):
        self.blobs = dict(blobs or {})
        self.manifests = dict(manifests or {})
        self.routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {}
        self.requests: list[str] = []
        self.release = threading.Event()  # ends every stall at teardown
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, body: bytes = b"", headers: dict | None = None):
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def route(self):
                path = self.path.split("?", 1)[0]
                registry.requests.append(f"{self.command} {path}")
                custom = registry.routes.get(path)
                if custom is not None and self.command in ("GET", "HEAD"):
                    return custom(self)
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                if path == "/v2/":
                    return self.answer(200, b"{}")
                if m := UPLOAD_PATH.match(path):
                    if self.command == "POST":
                        return self.answer(202, headers={"Location": f"/v2/{m['name']}/blobs/uploads/{uuid.uuid4().hex}"})
                    digest = self.path.split("digest=", 1)[1].replace("%3A", ":")
                    registry.blobs[digest] = data
                    return self.answer(201, headers={"Docker-Content-Digest": digest})
                m = MANIFEST_PATH.match(path)
                if m is None:
                    return self.answer(404)
                store = registry.manifests if m["kind"] == "manifests" else registry.blobs
                if self.command == "PUT":
                    digest = "sha256:" + hashlib.sha256(data).hexdigest()
                    store[m["ref"]] = store[digest] = data
                    return self.answer(201, headers={"Docker-Content-Digest": digest})
                if m["ref"] not in store:
                    return self.answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                return self.answer(200, store[m["ref"]])

            do_GET = do_HEAD = do_POST = do_PUT = route

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.ref = f"oci://{self.host}/models/tiny:{TAG}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def manifest(self) -> dict:
        return json.loads(self.manifests[TAG])

    def serve_manifest(self, body: bytes | dict) -> None:
        self.manifests[TAG] = body if isinstance(body, bytes) else json.dumps(body).encode()

    def blob_path(self, digest: str) -> str:
        return f"/v2/models/tiny/blobs/{digest}"


@pytest.fixture(scope="module")
def pushed(tiny_model, tmp_path_factory) -> tuple[Path, dict, dict]:
    """A tiny artifact pushed once through quantkit: (artifact, blobs, manifests) each test serves a copy of."""
    out = tmp_path_factory.mktemp("pull-hostile") / "out"
    recipe = quantkit.parse_recipe(tiny_recipe_text(tiny_model, out, f"  - {{method: rtn, name: tiny-{TAG}, scheme: W8A16}}\n"))
    [art] = quantkit.quantize(recipe)
    with FakeRegistry() as registry:
        quantkit.push(art.path, registry.ref, settings=PushSettings(license="mit", allow_unvalidated=True))
        return art.path, registry.blobs, registry.manifests


@pytest.fixture
def registry(pushed):
    with FakeRegistry(pushed[1], pushed[2]) as r:
        yield r


@pytest.fixture
def out(tmp_path) -> Path:
    """The destination's parent: empty, and it must stay empty when a pull fails."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def pull_fails(registry: FakeRegistry, out: Path, match: str) -> QuantkitError:
    with pytest.raises(QuantkitError) as e:
        pull(registry.ref, out / "pulled")
    assert re.search(match, str(e.value)), str(e.value)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)
    assert everything_under(out) == []  # no destination, no staging folder, no .part beside them
    return e.value


# ------------------------------------------------------------------ the fake registry is a registry


def test_pull_round_trips_and_force_replaces_only_an_artifact(registry, pushed, out):
    art = pushed[0]
    dest = out / "pulled"
    r = run_cli("pull", registry.ref, str(dest))
    assert r.returncode == 0, r.stderr
    assert quantkit.Artifact.load(dest).name == f"tiny-{TAG}"
    for name in json.loads((art / "quantkit.json").read_text())["files"]:
        assert (dest / name).read_bytes() == (art / name).read_bytes(), name

    again = run_cli("pull", registry.ref, str(dest))
    assert again.returncode == 2 and "pass --force to replace it" in again.stderr, again.stderr
    assert "force=True" not in again.stderr and "Traceback" not in again.stderr

    (dest / "model.safetensors").write_bytes(b"stale")  # still an artifact: its quantkit.json parses
    forced = run_cli("pull", registry.ref, str(dest), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (dest / "model.safetensors").read_bytes() == (art / "model.safetensors").read_bytes()

    mine = out / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = run_cli("pull", registry.ref, str(mine), "--force")
    assert refused.returncode == 2 and "is not a quantkit artifact" in refused.stderr, refused.stderr
    assert everything_under(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["mine", "pulled"]  # no staging folder left


# ------------------------------------------------------------------ malformed manifests


def _layer(m: dict, path: str) -> dict:
    return next(x for x in m["layers"] if x["annotations"][FILEPATH] == path)


def _set(path: str, key: str, value) -> Callable[[dict], None]:
    def change(m: dict) -> None:
        _layer(m, path)[key] = value
    return change


def _path(value, of: str = "config.json") -> Callable[[dict], None]:
    def change(m: dict) -> None:
        _layer(m, of)["annotations"][FILEPATH] = value
    return change


def _drop(key: str) -> Callable[[dict], None]:
    return lambda m: m.pop(key)


MALFORMED = {
    "not JSON": (b"{not json", "Invalid JSON"),
    "a JSON list": (b"[1, 2]", "not a valid OCI image manifest: Input should be an object"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "not a valid OCI image manifest"),
    "over 4 MiB": (b" " * (MAX_MANIFEST + 1) + b"{}", "over 4194304 bytes"),
    "an image index": (lambda m: m.update(mediaType="application/vnd.oci.image.index.v1+json"), "mediaType"),
    "schemaVersion 1": (lambda m: m.update(schemaVersion=1), "schemaVersion"),
    "no artifactType": (_drop("artifactType"), "not a ModelPack model artifact"),
    "no layers": (_drop("layers"), "layers: Field required"),
    "layers a dict": (lambda m: m.update(layers={"a": 1}), "layers: Input should be a valid array"),
    "no layer at all": (lambda m: m.update(layers=[]), "layers: List should have at least 1 item"),
    "a layer a string": (lambda m: m["layers"].append("x"), r"layers\.\d+: Input should be an object"),
    "config missing": (_drop("config"), "config: Field required"),
    "config another type": (lambda m: m["config"].update(mediaType="application/json"), "config.mediaType"),
    "digest not sha256": (_set("config.json", "digest", "md5:abc"), r"digest: String should match pattern"),
    "digest upper case": (_set("config.json", "digest", "sha256:" + "A" * 64), r"digest: String should match"),
    "digest a number": (_set("config.json", "digest", 12), r"digest: Input should be a valid string"),
    "digest missing": (lambda m: _layer(m, "config.json").pop("digest"), r"digest: Field required"),
    "size negative": (_set("config.json", "size", -1), r"size: Input should be greater than or equal to 0"),
    "size a string": (_set("config.json", "size", "4"), r"size: Input should be a valid integer"),
    "size a float": (_set("config.json", "size", 4.0), r"size: Input should be a valid integer"),
    "size true": (_set("config.json", "size", True), r"size: Input should be a valid integer"),
    "size past 1 TiB": (_set("config.json", "size", MAX_BLOB + 1), r"size: Input should be less than or equal"),
    "size missing": (lambda m: _layer(m, "config.json").pop("size"), r"size: Field required"),
    "layer a tar": (_set("config.json", "mediaType", "application/vnd.cncf.model.weight.v1.tar"), "not a layer quantkit writes"),
    "annotations a list": (_set("config.json", "annotations", ["x"]), r"annotations: Input should be an object"),
    "no filepath": (_set("config.json", "annotations", {}), f"no {FILEPATH} annotation"),
    "filepath a number": (_path(7), r"annotations\.org\.cncf\.model\.filepath: Input should be a valid string"),
    "path .": (_path("."), "not a plain relative path.*'\\.'"),
    "path sub/..": (_path("sub/.."), "not a plain relative path"),
    "path ../x": (_path("../x"), "not a plain relative path"),
    "path a/../../x": (_path("a/../../x"), "not a plain relative path"),
    "path /abs": (_path("/tmp/quantkit-pwned"), "it is absolute"),
    "path empty": (_path(""), "it is empty"),
    "path a//b": (_path("a//b"), "empty, '.' or '..' component"),
    "path trailing /": (_path("sub/"), "empty, '.' or '..' component"),
    "path backslash": (_path("..\\x"), "backslash"),
    "path control char": (_path("a\x1b[31mb"), "control character"),
    "path NUL": (_path("a\x00b"), "control character"),
    "path a lone surrogate": ('"a\\ud800b"', "Invalid JSON"),  # JSON text: json.dumps would not write it
    "path too long a name": (_path("x" * 256), "over 255 bytes"),
    "duplicate path": (_path("model.safetensors"), "two layers write 'model.safetensors'"),
    "duplicate path but case": (_path("MODEL.safetensors"), "two layers write"),
    "a file that is a folder": (_path("model.safetensors/config.json"), "is a file and also the folder of"),
    "the attestation's path": (_path(ATTESTATION_NAME), "the attestation's own path"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_manifest_is_one_error_and_writes_nothing(registry, out, case):
    change, match = MALFORMED[case]
    if isinstance(change, str):
        registry.serve_manifest(registry.manifests[TAG].decode().replace('"config.json"', change, 1).encode())
    elif isinstance(change, bytes):
        registry.serve_manifest(change)
    else:
        m = registry.manifest()
        change(m)
        registry.serve_manifest(m)
    e = pull_fails(registry, out, match)
    assert isinstance(e, PushError) and e.exit_code == 1
    assert not [r for r in registry.requests if "/blobs/" in r]  # refused before any blob was asked for
    assert not Path("/tmp/quantkit-pwned").exists()


def test_a_malformed_manifest_from_the_cli_is_one_line_exit_1(registry, out):
    m = registry.manifest()
    _path("sub/..")(m)
    registry.serve_manifest(m)
    r = run_cli("pull", registry.ref, str(out / "pulled"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "not a plain relative path" in r.stderr, r.stderr
    assert everything_under(out) == []


def test_a_hostile_referrers_index_or_attestation_manifest_is_refused(registry, out):
    subject = "sha256:" + hashlib.sha256(registry.manifests[TAG]).hexdigest()
    index_tag = subject.replace(":", "-")
    good_index = registry.manifests[index_tag]
    registry.manifests[index_tag] = b'{"schemaVersion": 2, "manifests": "all of them"}'
    pull_fails(registry, out, "referrers of .* is not a valid OCI referrers index: manifests: Input should be a valid array")

    registry.manifests[index_tag] = good_index
    [entry] = json.loads(good_index)["manifests"]
    registry.manifests[entry["digest"]] = b'{"schemaVersion": 2}'  # not the manifest the index names
    pull_fails(registry, out, "answered with a manifest of digest")


def test_an_error_answer_is_quoted_on_one_line_without_escapes(registry, out):
    def hostile(handler):
        handler.answer(500, b"line one\nline two \x1b[2J\x1b[31mred" + b"x" * 5_000_000)

    registry.routes[f"/v2/models/tiny/manifests/{TAG}"] = hostile
    e = pull_fails(registry, out, "the registry answered 500 line one line two")
    assert len(str(e)) < 600


# ------------------------------------------------------------------ blobs longer than declared


@pytest.mark.parametrize("announced", [False, True], ids=["close-delimited", "content-length"])
def test_a_blob_longer_than_declared_is_cut_off_at_its_size(registry, out, announced):
    m = registry.manifest()
    layer = _layer(m, "config.json")
    layer["size"] = 4
    registry.serve_manifest(m)
    offered = 100 << 20
    seen = {"sent": 0, "largest file": 0}

    def flood(handler):
        handler.send_response(200)
        if announced:
            handler.send_header("Content-Length", str(offered))
        handler.end_headers()
        chunk = b"\0" * (1 << 20)
        try:
            while seen["sent"] < offered:
                handler.wfile.write(chunk)
                seen["sent"] += len(chunk)
                sizes = [p.stat().st_size for p in out.rglob("*config.json*") if p.is_file()]  # the file or its .part
                seen["largest file"] = max([seen["largest file"], *sizes])
        except (BrokenPipeError, ConnectionResetError, FileNotFoundError):
            pass  # the client hung up: what a bounded reader does

    registry.routes[registry.blob_path(layer["digest"])] = flood
    pull_fails(registry, out, "announces 104857600 bytes" if announced else "sent more than the 4 bytes")
    assert seen["largest file"] <= 4  # never a byte past the declared size on disk
    assert seen["sent"] < 40 << 20  # the rest was never read (kernel socket buffers hold some MB)


def test_a_blob_shorter_than_declared_or_tampered_is_refused(registry, out):
    m = registry.manifest()
    layer = _layer(m, "config.json")
    registry.serve_manifest(m)
    registry.blobs[layer["digest"]] = registry.blobs[layer["digest"]][:-1]
    pull_fails(registry, out, r"announces \d+ bytes, the manifest declares")

    def short(handler):  # no Content-Length: the stream just ends early
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(b"{}")

    registry.routes[registry.blob_path(layer["digest"])] = short
    pull_fails(registry, out, r"sent 2 of its \d+ bytes")

    del registry.routes[registry.blob_path(layer["digest"])]
    registry.blobs[layer["digest"]] = b"x" * layer["size"]
    pull_fails(registry, out, "does not match its digest")


def test_declared_sizes_past_the_free_disk_are_refused_before_any_download(registry, out, monkeypatch):
    import quantkit.publish.destinations.oci as oci

    monkeypatch.setattr(oci.shutil, "disk_usage", lambda p: namedtuple("usage", "total used free")(10**6, 10**6, 1000))
    pull_fails(registry, out, "its layers declare .* free; make room")
    assert not [r for r in registry.requests if "/blobs/" in r]


# ------------------------------------------------------------------ stalls


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["manifest", "blob"])
def test_a_stalling_registry_times_out(registry, out, monkeypatch, where):
    monkeypatch.setenv("QUANTKIT_REGISTRY_TIMEOUT", "0.5")
    m = registry.manifest()

    def stall(handler):
        if where == "blob":  # headers and a first byte, then silence
            handler.send_response(200)
            handler.end_headers()
            handler.wfile.write(b"{")
            handler.wfile.flush()
        registry.release.wait(300)

    path = f"/v2/models/tiny/manifests/{TAG}" if where == "manifest" else registry.blob_path(_layer(m, "config.json")["digest"])
    registry.routes[path] = stall
    pull_fails(registry, out, r"failed: the registry sent nothing for 0\.5 s \(\$QUANTKIT_REGISTRY_TIMEOUT")


@pytest.mark.timeout(120)
def test_a_stall_from_the_cli_is_exit_1_and_a_bad_timeout_exit_2(registry, out, monkeypatch):
    registry.routes[f"/v2/models/tiny/manifests/{TAG}"] = lambda handler: registry.release.wait(300)
    r = run_cli("pull", registry.ref, str(out / "pulled"), env={"QUANTKIT_REGISTRY_TIMEOUT": "0.5"}, timeout=60)
    assert r.returncode == 1 and "sent nothing for 0.5 s" in r.stderr and "Traceback" not in r.stderr, r.stderr
    bad = run_cli("pull", registry.ref, str(out / "pulled"), env={"QUANTKIT_REGISTRY_TIMEOUT": "soon"}, timeout=60)
    assert bad.returncode == 2 and "QUANTKIT_REGISTRY_TIMEOUT='soon': expected a number of seconds > 0" in bad.stderr
    assert everything_under(out) == []
    for value in ("0", "-1", "nan", "inf"):
        monkeypatch.setenv("QUANTKIT_REGISTRY_TIMEOUT", value)
        with pytest.raises(QuantkitError, match="expected a number of seconds > 0") as e:
            OCIRegistry(registry.ref)
        assert e.value.exit_code == 2
