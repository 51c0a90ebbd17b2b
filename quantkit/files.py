"""Files on the bottom floor: hashing, folders that appear complete or not at all, sizes, the cache.

Everything above (artifacts, model sources, toolchains, validation) writes through these, so a
crash or Ctrl-C never leaves a half-written file or folder where a complete one is expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import threading
import uuid
from pathlib import Path
from typing import Callable, Iterator

from quantkit.errors import ArtifactError

PARTIAL_MARK = ".partial-"


def cache_dir() -> Path:
    """quantkit's cache: $QUANTKIT_CACHE, else $XDG_CACHE_HOME/quantkit, else ~/.cache/quantkit."""
    root = os.environ.get("QUANTKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "quantkit"
    )
    return Path(root)


HASH_CHUNK = 1 << 20
HASH_BUFFERS = 4


def sha256_file(path: Path, chunk: int = HASH_CHUNK) -> str:
    """sha256 of a file. A large file is read by a second thread while this one hashes (both release the
    GIL), so a file not in the page cache costs max(read, hash) instead of their sum. The two threads
    pass a few fixed buffers back and forth (readinto, no allocation per block): a few MB per file, and
    no heap growth that glibc would keep after the hash."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        if os.fstat(f.fileno()).st_size <= 2 * chunk:
            view = memoryview(bytearray(chunk))
            while n := f.readinto(view):
                h.update(view[:n])
            return h.hexdigest()
        with contextlib.suppress(AttributeError, OSError):  # a longer readahead window where the OS has one
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        empty: queue.Queue = queue.Queue()
        filled: queue.Queue = queue.Queue()
        for _ in range(HASH_BUFFERS):
            empty.put(memoryview(bytearray(chunk)))
        stop = threading.Event()

        def read() -> None:
            try:
                while not stop.is_set():
                    with contextlib.suppress(queue.Empty):
                        buf = empty.get(timeout=0.1)
                        n = f.readinto(buf)
                        filled.put((buf, n))
                        if not n:
                            return
            except OSError as e:
                filled.put((e, 0))

        reader = threading.Thread(target=read, name="quantkit-hash-read", daemon=True)
        reader.start()
        try:
            while True:
                buf, n = filled.get()
                if isinstance(buf, OSError):
                    raise buf
                if not n:
                    break
                h.update(buf[:n])
                empty.put(buf)
        finally:
            stop.set()
            reader.join()
    return h.hexdigest()


def sha256_files(paths: list[Path]) -> list[str]:
    """sha256 of several files, in parallel threads (hashlib releases the GIL): shards of a large model
    are hashed at up to one core each. Daemon threads, not an executor: interpreter exit (Ctrl-C) joins
    an executor's workers and would wait for the hashing to end."""
    paths = list(paths)
    workers = min(len(paths), os.cpu_count() or 1, 8)
    if workers <= 1:
        return [sha256_file(p) for p in paths]
    digests: list[str | None] = [None] * len(paths)
    errors: list[BaseException] = []
    todo = iter(enumerate(paths))
    lock = threading.Lock()

    def work() -> None:
        while not errors:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            try:
                digests[item[0]] = sha256_file(item[1])
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread below
                errors.append(e)

    threads = [threading.Thread(target=work, name="quantkit-hash", daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return digests  # type: ignore[return-value]


FILE_HASH_CACHE_VERSION = 1


def cached_sha256(path: Path) -> str:
    """sha256 of a file that may be hashed again later (a base model's weights, a source GGUF): recorded
    under the cache keyed by the resolved path with the file's size, mtime (ns) and inode; any change
    to those hashes it again. A rewrite that keeps size, mtime and inode would be missed: `touch` the
    file, or clear `<cache>/fingerprints/files`."""
    return cached_sha256s([path])[0]


def cached_sha256s(paths: list[Path]) -> list[str]:
    paths = [Path(p).resolve() for p in paths]
    records = [cache_dir() / "fingerprints" / "files" / f"{hashlib.sha256(str(p).encode()).hexdigest()[:32]}.json"
               for p in paths]
    keys = [[FILE_HASH_CACHE_VERSION, str(p), st.st_size, st.st_mtime_ns, st.st_ino] for p in paths for st in [p.stat()]]
    digests: list[str | None] = []
    for record, key in zip(records, keys):
        try:
            cached = json.loads(record.read_text())
            digests.append(cached["sha256"] if cached.get("key") == key else None)
        except (OSError, ValueError, KeyError, AttributeError):
            digests.append(None)
    todo = [i for i, d in enumerate(digests) if d is None]
    for i, digest in zip(todo, sha256_files([paths[i] for i in todo])):
        digests[i] = digest
        try:
            records[i].parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(records[i], json.dumps({"key": keys[i], "sha256": digest}) + "\n")
        except OSError:  # a full or read-only cache: the record only spares a later re-hash, the digest is exact
            pass
    return digests  # type: ignore[return-value]


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and a rename: readers see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(dest: Path) -> list[Path]:
    """Remove staging folders of `dest` left by runs that were killed (SIGKILL, power loss)."""
    removed: list[Path] = []
    prefix = f".{dest.name}{PARTIAL_MARK}"
    if not dest.parent.is_dir():
        return removed
    for p in dest.parent.iterdir():
        if p.name.startswith(prefix):
            try:
                pid = int(p.name[len(prefix):].split("-")[0])
            except ValueError:
                continue
            if not pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def check_destination(dest: Path, force: bool, replaceable: Callable[[Path], bool] | None = None) -> None:
    """Refuse an existing `dest` unless `force`; with `replaceable`, even `force` replaces only what
    it accepts (quantize: a quantkit artifact), never a folder of the user's."""
    if not (dest.exists() or dest.is_symlink()):
        return
    if not force:
        raise ArtifactError(f"{dest} already exists; pass --force to replace it")
    if replaceable is not None and not replaceable(dest):
        raise ArtifactError(f"{dest} exists and is not a quantkit artifact (no valid quantkit.json); --force replaces only "
                            "artifacts, so it was left as it is: move it away or give the output another name")


@contextlib.contextmanager
def staged_folder(dest: Path, force: bool = False, replaceable: Callable[[Path], bool] | None = None,
                  discard: Callable[[Path], object] | None = None) -> Iterator[Path]:
    """Yield a hidden staging folder beside `dest`; move it into place only if the block succeeds.

    Any exception, Ctrl-C or SIGTERM (both KeyboardInterrupt in the CLI) removes the staging folder, so
    `dest` either holds a complete folder or is untouched. The folder it replaces is moved aside and then
    removed by `discard` (artifacts: only the files quantkit wrote; what is left stays in the moved-aside folder).
    """
    dest = Path(dest)
    check_destination(dest, force, replaceable)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest)
    staging = dest.parent / f".{dest.name}{PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        check_destination(dest, force, replaceable)
        if dest.exists():
            trash = dest.parent / f".{dest.name}.replaced-{uuid.uuid4().hex[:8]}"
            os.rename(dest, trash)
            os.rename(staging, dest)
            if discard is None:
                shutil.rmtree(trash, ignore_errors=True)
            else:
                discard(trash)
        else:
            os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def exclusive_outputs(dests: list[Path]) -> Iterator[None]:
    """Hold an exclusive lock per destination for a whole run (flock on a file in the cache, keyed by
    the absolute path: nothing is added to the user's folder); another run on one of them is refused."""
    import fcntl

    root = cache_dir() / "locks"
    root.mkdir(parents=True, exist_ok=True)
    held = []
    try:
        for dest in dests:
            key = hashlib.sha256(str(Path(dest).resolve()).encode()).hexdigest()[:32]
            f = open(root / f"{key}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                owner = f.read().strip() or "?"
                f.close()
                raise ArtifactError(f"another quantkit run (pid {owner}) is writing {dest}; "
                                    "wait for it to finish or stop it") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            held.append(f)
        yield
    finally:
        for f in held:
            f.close()  # closing releases the lock
