"""A STAND-IN for the Hugging Face Hub, not the Hub: there is no hub server reachable from CI, so this
small HTTP server implements the endpoints huggingface_hub 1.x calls to push and download a model repo
(create repo, create branch, preupload, LFS batch/upload/verify, commit, revision info, resolve), with
just enough behaviour to observe what quantkit sends: every request and every uploaded byte is kept,
and it can drop the connection during an LFS upload to test resumption. Xet storage is not implemented
(clients must run with HF_HUB_DISABLE_XET=1)."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

LFS_THRESHOLD = 1_000_000  # files above this go through LFS (the Hub's rule is 10 MB; smaller keeps tests fast)


@dataclass
class HubState:
    repos: dict[str, dict] = field(default_factory=dict)  # repo -> {"private": bool, "branches": {name: {path: bytes}}}
    lfs: dict[str, bytes] = field(default_factory=dict)  # oid -> content
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # (method, path, had Authorization)
    received: list[bytes] = field(default_factory=list)  # every request body
    lfs_puts: list[str] = field(default_factory=list)
    drop_commits: int = 0  # drop the connection (no response) at this many commit requests
    commits: int = 0
    pull_requests: int = 0


def _handler(state: HubState, lock: threading.Lock):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        @property
        def base(self) -> str:
            return f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    n = int(self.rfile.readline().strip(), 16)
                    if n == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(n)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, code: int, obj=None, raw: bytes | None = None, headers: dict | None = None, head=False):
            body = raw if raw is not None else (json.dumps(obj).encode() if obj is not None else b"")
            self.send_response(code)
            self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _record(self, body: bytes) -> str:
            with lock:
                state.requests.append((self.command, self.path, "Authorization" in self.headers))
                state.received.append(body)
            return unquote(self.path.split("?")[0])

        def do_POST(self):
            body = self._body()
            p = self._record(body)
            if p == "/api/repos/create":
                d = json.loads(body)
                rid = f"{d.get('organization') or 'user'}/{d['name']}"
                with lock:
                    if rid in state.repos:
                        return self._send(409, {"error": "You already created this model repo", "url": f"{self.base}/{rid}"})
                    private = bool(d.get("private")) or d.get("visibility") == "private"
                    state.repos[rid] = {"private": private, "branches": {"main": {}}}
                return self._send(200, {"url": f"{self.base}/{rid}", "name": rid, "id": rid})
            if p == "/api/validate-yaml":
                return self._send(200, {"errors": [], "warnings": []})
            if p.startswith("/api/models/") and "/branch/" in p:
                rid, branch = p.removeprefix("/api/models/").split("/branch/")
                with lock:
                    state.repos[rid]["branches"].setdefault(branch, dict(state.repos[rid]["branches"]["main"]))
                return self._send(200, {})
            if "/preupload/" in p:
                files = json.loads(body)["files"]
                modes = [{"path": f["path"], "uploadMode": "lfs" if f["size"] > LFS_THRESHOLD else "regular",
                          "shouldIgnore": False, "oid": None} for f in files]
                return self._send(200, {"files": modes})
            if p.endswith(".git/info/lfs/objects/batch"):
                objects = []
                for o in json.loads(body)["objects"]:
                    entry = {"oid": o["oid"], "size": o["size"], "authenticated": True}
                    if o["oid"] not in state.lfs:  # stored objects get no upload action: the client skips them
                        entry["actions"] = {"upload": {"href": f"{self.base}/lfs-upload/{o['oid']}"},
                                            "verify": {"href": f"{self.base}/lfs-verify"}}
                    objects.append(entry)
                return self._send(200, {"transfer": "basic", "objects": objects})
            if p == "/lfs-verify":
                return self._send(200, {})
            if "/commit/" in p:
                with lock:
                    drop, state.drop_commits = state.drop_commits > 0, max(0, state.drop_commits - 1)
                if drop:  # the connection breaks before the hub answers: nothing is committed
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                rid, rev = p.removeprefix("/api/models/").split("/commit/")
                create_pr = "create_pr=1" in self.path
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                with lock:
                    files = {}
                    for line in lines:
                        v = line["value"]
                        if line["key"] == "file":
                            import base64

                            files[v["path"]] = base64.b64decode(v["content"])
                        elif line["key"] == "lfsFile":
                            if v["oid"] not in state.lfs:
                                return self._send(400, {"error": f"LFS object {v['oid']} was never uploaded"})
                            files[v["path"]] = state.lfs[v["oid"]]
                    branch = "refs/pr/1" if create_pr else rev
                    state.repos[rid]["branches"].setdefault(branch, dict(state.repos[rid]["branches"]["main"])).update(files)
                    state.commits += 1
                    state.pull_requests += create_pr
                oid = hashlib.sha1(body).hexdigest()
                return self._send(200, {"commitUrl": f"{self.base}/{rid}/commit/{oid}", "commitOid": oid,
                                        "pullRequestUrl": f"{self.base}/{rid}/discussions/1" if create_pr else None})
            self._send(404, {"error": f"stand-in has no POST {p}"})

        def do_PUT(self):
            p = self.path
            body = self._body()
            self._record(body)
            if p.startswith("/lfs-upload/"):
                oid = p.rsplit("/", 1)[1]
                if hashlib.sha256(body).hexdigest() != oid:
                    return self._send(400, {"error": "content does not match its oid"})
                with lock:
                    state.lfs[oid] = body
                    state.lfs_puts.append(oid)
                return self._send(200)
            self._send(404, {})

        def _file(self, head: bool):
            p = self._record(b"")
            if p.startswith("/api/models/") and "/revision/" in p:
                rid, rev = p.removeprefix("/api/models/").split("/revision/")
                repo = state.repos.get(rid)
                if repo is None or rev not in repo["branches"]:
                    return self._send(404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
                files = repo["branches"][rev]
                listing = sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())
                sha = hashlib.sha1(json.dumps(listing).encode()).hexdigest()
                return self._send(200, {"id": rid, "modelId": rid, "sha": sha, "private": repo["private"],
                                        "siblings": [{"rfilename": name} for name in sorted(files)]}, head=head)
            if p.startswith("/api/models/") and "/tree/" in p:
                rid, rest = p.removeprefix("/api/models/").split("/tree/", 1)
                files = self._branch(rid, rest.split("/", 1)[0])
                if files is None:
                    return self._send(404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
                tree = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                        for name, data in sorted(files.items())]
                return self._send(200, tree, head=head)
            if "/resolve/" in p:
                rid, rest = p.lstrip("/").split("/resolve/", 1)
                rev, name = rest.split("/", 1)
                files = self._branch(rid, rev)
                if files is None or name not in files:
                    return self._send(404, {"error": "Entry not found"}, headers={"X-Error-Code": "EntryNotFound"})
                data = files[name]
                etag = hashlib.sha256(data).hexdigest()
                return self._send(200, raw=data, head=head, headers={"X-Repo-Commit": "b" * 40, "ETag": f'"{etag}"'})
            self._send(404, {"error": f"stand-in has no GET {p}"}, head=head)

        def _branch(self, rid: str, rev: str) -> dict | None:
            """A branch by name; a commit sha reads main (the stand-in keeps no history)."""
            repo = state.repos.get(rid)
            if repo is None:
                return None
            return repo["branches"].get(rev, repo["branches"]["main"])

        def do_GET(self):
            self._file(head=False)

        def do_HEAD(self):
            self._file(head=True)

    return Handler


class HubStandIn:
    """Start with `with HubStandIn() as hub:`; `hub.url` is the endpoint to put in HF_ENDPOINT."""

    def __init__(self):
        self.state = HubState()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state, threading.Lock()))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "HubStandIn":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo: str, branch: str = "main") -> dict[str, bytes]:
        return self.state.repos[repo]["branches"][branch]
