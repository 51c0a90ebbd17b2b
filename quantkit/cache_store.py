"""A content-addressed, bounded store in quantkit's cache for results worth computing once.

An entry is a folder named by the sha256 of its key (a JSON object naming every input that
decides the result). It is built in a hidden staging folder and renamed into place complete,
under an exclusive lock on the key, so two processes asking for the same entry compute it
once and a reader never sees a half-written one. Each use touches the entry's `key.json`;
`prune` removes the least recently used entries not in use until the store fits its bound,
and staging folders of killed builds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from quantkit.errors import QuantkitError
from quantkit.files import cache_dir, folder_size, pid_alive

KEY_FILE = "key.json"
DEFAULT_MAX_BYTES = 20 * 1024**3
# stores under cache_dir() that `quantkit cache` lists and prunes
# the stores validation keeps, named once: `quantkit cache` lists and prunes exactly these
REFERENCES, LLAMACPP_LOGITS, LM_EVAL_BASE = "references", "llamacpp-logits", "lm-eval-base"
STORES = (REFERENCES, LLAMACPP_LOGITS, LM_EVAL_BASE)


def max_bytes_setting() -> int:
    """The bound of each store: $QUANTKIT_CACHE_MAX_GB (a number of GiB), else 20 GiB."""
    raw = os.environ.get("QUANTKIT_CACHE_MAX_GB")
    if raw is None:
        return DEFAULT_MAX_BYTES
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise QuantkitError(f"QUANTKIT_CACHE_MAX_GB={raw!r}: expected a positive number of GiB")
    return int(value * 1024**3)


# errors of the cache's disk itself (full, read-only, not ours): one line naming the cache, not a traceback
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def cache_write_error(root: Path, e: OSError) -> QuantkitError:
    why = "no space left on its disk" if e.errno in FULL_DISK else (e.strerror or str(e))
    return QuantkitError(f"cannot write to quantkit's cache at {root} ({why}); free space there, or set QUANTKIT_CACHE "
                         "to a folder on a disk with room (`quantkit cache` lists and prunes what it holds)")


def _is_cache_write_error(root: Path, e: OSError) -> bool:
    """A full disk while building an entry (a write names no file), or a read-only / foreign cache folder
    (the error names a path in the cache); a build's error about another path is not the cache's."""
    named = e.filename if isinstance(e.filename, (str, os.PathLike)) else None
    inside = named is not None and Path(named).resolve().is_relative_to(Path(root).resolve())
    return (e.errno in FULL_DISK and (named is None or inside)) or (e.errno in UNWRITABLE and inside)


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class CacheEntry:
    path: Path
    key: dict
    bytes: int
    last_used: float


class CacheStore:
    def __init__(self, name: str, root: Path | None = None, max_bytes: int | None = None) -> None:
        self.name = name
        self.root = (root or cache_dir()) / name
        self.max_bytes = max_bytes if max_bytes is not None else max_bytes_setting()

    def path_for(self, key: dict) -> Path:
        return self.root / key_digest(key)

    def get(self, key: dict) -> Path | None:
        entry = self.path_for(key)
        if (entry / KEY_FILE).is_file():
            os.utime(entry / KEY_FILE)
            return entry
        return None

    @contextlib.contextmanager
    def _lock(self, digest: str, mode: int) -> Iterator[int]:
        locks = self.root / ".locks"
        try:
            locks.mkdir(parents=True, exist_ok=True)
            handle = open(locks / f"{digest}.lock", "w")
        except OSError as e:
            if _is_cache_write_error(self.root, e):
                raise cache_write_error(self.root, e) from None
            raise
        with handle:
            fcntl.flock(handle, mode)
            try:
                yield handle.fileno()
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def entry(self, key: dict, build: Callable[[Path], None]) -> Iterator[tuple[Path, bool]]:
        """The entry for `key`, built by `build(staging_folder)` if absent: yields (path, built_now).

        A stored entry is held with a shared lock while the block runs: any number of processes read
        it at once, and `prune` in another process passes it by. An absent entry is built under the
        exclusive lock (flock drops the shared one first, so two builders cannot deadlock); a second
        process waits, then finds it. A failed build leaves nothing behind.
        """
        digest = key_digest(key)
        dest = self.root / digest
        with self._lock(digest, fcntl.LOCK_SH) as fd:
            built = False
            if self.get(key) is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            if self.get(key) is None:  # checked again under the exclusive lock: another process may have built it
                self.remove_stale_staging()
                staging = self.root / f".{digest}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                try:
                    staging.mkdir(parents=True)
                    build(staging)
                    (staging / KEY_FILE).write_text(json.dumps(key, indent=1, sort_keys=True) + "\n")
                    if dest.exists():  # a folder without its key file: not a complete entry
                        shutil.rmtree(dest)
                    os.rename(staging, dest)
                except OSError as e:
                    shutil.rmtree(staging, ignore_errors=True)
                    if _is_cache_write_error(self.root, e):
                        raise cache_write_error(self.root, e) from None
                    raise
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
                built = True
            fcntl.flock(fd, fcntl.LOCK_SH)
            if built:
                self.prune(self.max_bytes, keep={dest})
            yield dest, built

    def _remove_unless_in_use(self, path: Path) -> bool:
        try:
            with self._lock(path.name, fcntl.LOCK_EX | fcntl.LOCK_NB):
                shutil.rmtree(path, ignore_errors=True)
            return True
        except BlockingIOError:  # another process is reading or building it
            return False

    def entries(self) -> list[CacheEntry]:
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            key_file = p / KEY_FILE
            if p.name.startswith(".") or not key_file.is_file():
                continue
            try:
                key = json.loads(key_file.read_text())
            except (OSError, ValueError):
                key = {}
            out.append(CacheEntry(p, key, folder_size(p), key_file.stat().st_mtime))
        return sorted(out, key=lambda e: e.last_used, reverse=True)

    def prune(self, max_bytes: int, keep: set[Path] | frozenset = frozenset()) -> list[CacheEntry]:
        """Remove least recently used entries until the store holds at most `max_bytes` (entries in
        `keep` stay), and staging folders of builds whose process is gone."""
        removed = []
        total = 0
        for entry in self.entries():  # most recent first
            total += entry.bytes
            if total > max_bytes and entry.path not in keep and self._remove_unless_in_use(entry.path):
                removed.append(entry)
                total -= entry.bytes
        self.remove_stale_staging()
        return removed

    def remove_stale_staging(self) -> None:
        """Staging folders of builds whose process is gone (killed: SIGKILL, power loss)."""
        if not self.root.is_dir():
            return
        for p in self.root.glob(".*.partial-*"):
            try:
                pid = int(p.name.rsplit(".partial-", 1)[1].split("-")[0])
            except (IndexError, ValueError):
                continue
            if not pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)


def all_stores(root: Path | None = None) -> list[CacheStore]:
    return [CacheStore(name, root, max_bytes=DEFAULT_MAX_BYTES) for name in STORES]
