"""A real OCI registry on loopback for tests: the CNCF distribution registry from Debian's
`docker-registry` package (which `.ci/run` installs), started per test with its storage in tmp_path."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

BINARY = "docker-registry"


def registry_binary() -> str | None:
    return shutil.which(BINARY) or ("/usr/bin/docker-registry" if os.path.exists("/usr/bin/docker-registry") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackRegistry:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LoopbackRegistry":
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
                          f"  delete:\n    enabled: true\nhttp:\n  addr: {self.host}\n")
        self.log = open(self.root / "registry.log", "wb")
        self.proc = subprocess.Popen([registry_binary(), "serve", str(config)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"docker-registry did not start: {(self.root / 'registry.log').read_text()[-2000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()

    def blob_path(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.root / "data" / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
