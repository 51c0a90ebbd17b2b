"""Output roots given as URLs: object stores and file systems that hold files (s3://, gs://, az://, file://).

A job with such a root builds its artifact in a local folder of the worker (under quantkit's cache),
exactly as for a path, then publishes it: every file is uploaded, then `quantkit.json` last. Object
stores have no atomic rename, so the manifest is the commit mark: a folder without it is not an
artifact, and a reader never sees a half-published one as finished. Replacing an earlier artifact
first removes its manifest, so a run killed during the upload leaves a folder that reads as
incomplete, never as the old or the new artifact.

Only storage protocols are accepted (STORAGE_PROTOCOLS), checked from the URL's text alone: fsspec also
knows protocols that are not storage (zip://, reference://, github://) or that open a connection as soon
as their file system is made (ftp://), and a recipe must not choose where quantkit sends data.
`memory://` lives in one process: the library API accepts it (its caller's process outlives the
artifact, as in the test suite), a quantkit command does not (its artifacts would be gone at its exit).
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import Path

from quantkit.artifact import LOCAL_NAME, MANIFEST_NAME, Manifest
from quantkit.errors import QuantkitError
from quantkit.files import cache_dir

# the protocols an output root may use: file systems and object stores that keep what is written
STORAGE_PROTOCOLS = ("file", "s3", "gs", "gcs", "az", "abfs")
# file systems that live in one process: a worker elsewhere cannot see what the driver sees, and what a
# command writes there is gone when it exits (the library API only: quantkit.executors.run_jobs)
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
    """`root`/`parts` (empty parts skipped): a URL stays a URL string, anything else is a Path. A URL of a
    protocol that is not storage is refused here, where every job's destination is made."""
    parts = tuple(p for p in parts if p)
    if is_url(root):
        check_protocol(root)
        return join(root, *parts)
    return Path(root, *parts)


def check_protocol(url: str) -> None:
    """Refuse `url` unless its protocol is storage (STORAGE_PROTOCOLS) or PROCESS_LOCAL (which root_problems
    refuses for a command). Reads the text only: no file system is made, nothing is imported or connected to."""
    scheme = protocol(url)
    if scheme not in STORAGE_PROTOCOLS + PROCESS_LOCAL:
        # memory:// is not offered: a command's artifacts there would be gone when it exits
        raise QuantkitError(f"output_dir {url}: '{scheme}://' is not a storage protocol quantkit writes artifacts to; "
                            f"use a local path or one of {', '.join(p + '://' for p in STORAGE_PROTOCOLS)}")


def file_system(url: str):
    """(fs, path) for `url`; a clear error when the protocol is not storage or its package is missing."""
    from fsspec.core import url_to_fs

    check_protocol(url)
    _check_package(url)
    return url_to_fs(url)


def _check_package(url: str) -> None:
    import fsspec

    scheme = protocol(url)
    try:
        fsspec.get_filesystem_class(scheme)  # imports the implementation's class; makes no file system
    except ImportError as e:
        raise QuantkitError(f"output_dir {url}: '{scheme}://' needs a package that is not installed ({e})") from None


def root_problems(url: str, executor: str) -> list[str]:
    """What is wrong with `url` as the output root of a quantkit command running on `executor`, before any
    job starts. A protocol that is not storage is refused at once (one line). No file system is made."""
    check_protocol(url)
    scheme = protocol(url)
    if scheme in PROCESS_LOCAL:
        if executor != "local":
            return [f"output_dir {url}: '{scheme}://' lives in this process only; the workers of --executor "
                    f"{executor} cannot see it; use a path every node mounts or an object store (s3://...)"]
        return [f"output_dir {url}: '{scheme}://' lives in this process only; what a quantkit command writes there "
                "is gone when it exits; use a path or an object store (s3://...)"]
    try:
        _check_package(url)
    except QuantkitError as e:
        return [str(e)]
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
    # the local side file names this machine's folders: it stays here (a reader finds the base from its source)
    files = sorted(p for p in local.rglob("*")
                   if p.is_file() and p.relative_to(local).as_posix() not in (MANIFEST_NAME, LOCAL_NAME))
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
