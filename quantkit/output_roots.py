"""Output roots given as URLs: any file system fsspec knows (s3://, gs://, az://, file://, memory://).

A job with such a root builds its artifact in a local folder of the worker (under quantkit's cache),
exactly as for a path, then publishes it: every file is uploaded, then `quantkit.json` last. Object
stores have no atomic rename, so the manifest is the commit mark: a folder without it is not an
artifact, and a reader never sees a half-published one as finished. Replacing an earlier artifact
first removes its manifest, so a run killed during the upload leaves a folder that reads as
incomplete, never as the old or the new artifact.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import Path

from quantkit.artifact import MANIFEST_NAME, Manifest
from quantkit.errors import QuantkitError
from quantkit.files import cache_dir

# file systems that live in one process: a worker elsewhere cannot see what the driver sees
PROCESS_LOCAL = ("memory",)


def is_url(root: str | Path | None) -> bool:
    return isinstance(root, str) and "://" in root


def protocol(url: str) -> str:
    return url.split("://", 1)[0]


def join(url: str, *parts: str) -> str:
    base = url.rstrip("/")
    rest = posixpath.join(*parts) if parts else ""
    return f"{base}/{rest}" if rest else base


def under(root: str | Path, *parts: str) -> Path | str:
    """`root`/`parts` (empty parts skipped): a URL stays a URL string, anything else is a Path."""
    parts = tuple(p for p in parts if p)
    return join(root, *parts) if is_url(root) else Path(root, *parts)


def file_system(url: str):
    """(fs, path) for `url`; a clear error when the scheme is unknown or its package is missing."""
    import fsspec
    from fsspec.core import url_to_fs

    scheme = protocol(url)
    try:
        fsspec.get_filesystem_class(scheme)
    except ValueError:
        raise QuantkitError(f"output_dir {url}: '{scheme}://' is not a file system fsspec knows; use a path, "
                            "or a URL such as s3://BUCKET/PREFIX, gs://..., file:///PATH") from None
    except ImportError as e:
        raise QuantkitError(f"output_dir {url}: '{scheme}://' needs a package that is not installed ({e})") from None
    return url_to_fs(url)


def root_problems(url: str, executor: str) -> list[str]:
    """What is wrong with `url` as the output root of a run on `executor`, before any job starts."""
    try:
        file_system(url)
    except QuantkitError as e:
        return [str(e)]
    if executor != "local" and protocol(url) in PROCESS_LOCAL:
        return [f"output_dir {url}: '{protocol(url)}://' lives in this process only; the workers of --executor "
                f"{executor} cannot see it; use a path every node mounts or an object store (s3://...)"]
    return []


def build_folder(url: str) -> Path:
    """Where this machine builds the artifact published to `url` (its own folder: jobs never share one)."""
    return cache_dir() / "published-builds" / hashlib.sha256(url.encode()).hexdigest()[:20]


@dataclass
class RemoteArtifact:
    """What a URL holds: a manifest (or not) and the files there, with their sizes."""

    url: str
    manifest: Manifest | None
    problem: str  # why it does not read as a whole artifact ("" when it does)


def read_remote(url: str) -> RemoteArtifact:
    """Read the manifest at `url` and check that every file it lists is there with its size. Checksums
    are not re-read here (that would download the artifact): `quantkit validate` verifies them."""
    from pydantic import ValidationError

    fs, path = file_system(url)
    if not fs.exists(path):
        return RemoteArtifact(url, None, "not made yet")
    try:
        manifest = Manifest.model_validate_json(fs.cat_file(posixpath.join(path, MANIFEST_NAME)))
    except FileNotFoundError:
        return RemoteArtifact(url, None, f"no {MANIFEST_NAME}: not an artifact, or an upload that did not finish")
    except (ValidationError, ValueError) as e:
        return RemoteArtifact(url, None, f"{MANIFEST_NAME} is not a valid manifest ({str(e).splitlines()[0]})")
    sizes = {posixpath.relpath(p, path): info.get("size") for p, info in fs.find(path, detail=True).items()}
    for rel, record in manifest.files.items():
        if rel not in sizes:
            return RemoteArtifact(url, manifest, f"damaged (missing: {rel})")
        if sizes[rel] != record.bytes:
            return RemoteArtifact(url, manifest, f"damaged ({rel}: {sizes[rel]} bytes, the manifest says {record.bytes})")
    return RemoteArtifact(url, manifest, "")


def publish(local: Path, url: str) -> int:
    """Upload the finished artifact `local` to `url`, its manifest last; returns the bytes sent.
    Refuses a destination that holds anything but a quantkit artifact (never overwritten)."""
    if not (local / MANIFEST_NAME).is_file():
        raise QuantkitError(f"{local}: no {MANIFEST_NAME}; only a finished artifact is published")
    fs, path = file_system(url)
    old: set[str] = set()
    if fs.exists(path):
        marker = posixpath.join(path, MANIFEST_NAME)
        if not fs.isdir(path) or not _parses(fs, marker):
            raise QuantkitError(f"{url} exists and is not a quantkit artifact: left alone; choose another output_dir "
                                "or remove it yourself")
        old = {posixpath.relpath(p, path) for p in fs.find(path)}
        fs.rm_file(marker)  # from here on the old artifact reads as incomplete, never as finished
    files = sorted(p for p in local.rglob("*") if p.is_file() and p != local / MANIFEST_NAME)
    sent = 0
    for f in files:
        rel = f.relative_to(local).as_posix()
        target = posixpath.join(path, rel)
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        fs.put_file(str(f), target)
        sent += f.stat().st_size
    for rel in sorted(old - {f.relative_to(local).as_posix() for f in files} - {MANIFEST_NAME}):
        fs.rm_file(posixpath.join(path, rel))  # a file of the replaced artifact that the new one does not have
    fs.put_file(str(local / MANIFEST_NAME), posixpath.join(path, MANIFEST_NAME))
    return sent + (local / MANIFEST_NAME).stat().st_size


def _parses(fs, marker: str) -> bool:
    try:
        Manifest.model_validate_json(fs.cat_file(marker))
    except Exception:  # noqa: BLE001 - missing, unreadable or not a manifest: not ours either way
        return False
    return True
