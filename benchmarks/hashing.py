"""Hashing throughput against reading the same files, cold (evicted from the page cache) and warm.

For each round and each cache state, in alternating order: `cat FILES > /dev/null`, the single-thread
read-then-hash loop quantkit used before (`before`), and quantkit's `sha256_files` (a reader thread
per file overlapping the hash, files in parallel). Cold means each file was evicted with
posix_fadvise(DONTNEED) just before (checked with fincore where present). Prints GB/s per method,
medians with min-max over the rounds, and each method's throughput as a fraction of cat's.

Then the cache: `fingerprint_folder` of the same files a first time (hashes) and again (cached by
path, size, mtime and inode: no file is read).

    python benchmarks/hashing.py                       # the built-in SmolLM2 float base (538 MB)
    python benchmarks/hashing.py --synthetic 4x256     # plus a folder of 4 random 256 MB shards
    python benchmarks/hashing.py --folder PATH --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quantkit.files import sha256_files  # noqa: E402


def before(paths: list[Path]) -> list[str]:
    """The implementation before issue 14: one thread, read 4 MiB, hash, repeat."""
    out = []
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        out.append(h.hexdigest())
    return out


def cat(paths: list[Path]) -> None:
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)


def evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)  # only clean pages can be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: list[Path]) -> float | None:
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", *map(str, paths)],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    rows = [tuple(map(int, line.split())) for line in out.splitlines() if line.strip()]
    return sum(r for r, _ in rows) / max(sum(s for _, s in rows), 1)


METHODS = {"cat": cat, "before": before, "quantkit": sha256_files}


def bench(paths: list[Path], rounds: int) -> dict[str, dict[str, list[float]]]:
    size = sum(p.stat().st_size for p in paths)
    speeds: dict[str, dict[str, list[float]]] = {s: {m: [] for m in METHODS} for s in ("cold", "warm")}
    for r in range(rounds):
        order = list(METHODS) if r % 2 == 0 else list(METHODS)[::-1]
        for state in ("cold", "warm"):
            for name in order:
                if state == "cold":
                    evict(paths)
                    left = resident_fraction(paths)
                    if left is not None and left > 0.01:
                        raise SystemExit(f"could not evict the files from the page cache ({left:.0%} still resident)")
                else:
                    cat(paths)
                t = time.perf_counter()
                METHODS[name](paths)
                speeds[state][name].append(size / (time.perf_counter() - t) / 1e9)
    return speeds


def report(label: str, paths: list[Path], speeds: dict) -> None:
    size = sum(p.stat().st_size for p in paths)
    print(f"\n{label}: {len(paths)} files, {size / 1e9:.2f} GB; GB/s median (min-max); fraction of cat's median")
    for state, by_method in speeds.items():
        cat_med = statistics.median(by_method["cat"])
        for name, values in by_method.items():
            med = statistics.median(values)
            print(f"  {state:4s} {name:9s} {med:6.2f} ({min(values):.2f}-{max(values):.2f})  {med / cat_med:5.2f}")


def fingerprint_cache(folder: Path) -> None:
    os.environ["QUANTKIT_CACHE"] = tempfile.mkdtemp(prefix="hash-bench-cache-")  # an empty cache: the first call hashes
    from quantkit.sources.models import fingerprint_folder

    t = time.perf_counter()
    first = fingerprint_folder(folder)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    again = fingerprint_folder(folder)
    t2 = time.perf_counter() - t
    assert first == again
    print(f"\nfingerprint_folder({folder.name}): first {t1:.3f} s, again (unchanged files) {t2 * 1000:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, help="a model folder (default: the built-in SmolLM2 float base)")
    ap.add_argument("--synthetic", help="also a folder of K random files of N MB, as KxN")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores; {platform_cpu()}")
    if args.folder is None:
        import quantkit
        from quantkit.sources.models import resolve_model

        recipe = quantkit.parse_recipe("name: b\nmodel: smollm2-135m\noutputs: [{name: x, method: rtn}]")
        args.folder = resolve_model(recipe.model).path
    paths = sorted(p for p in args.folder.iterdir() if p.is_file())
    report(str(args.folder), paths, bench(paths, args.rounds))
    if args.synthetic:
        k, n = (int(x) for x in args.synthetic.lower().split("x"))
        with tempfile.TemporaryDirectory(prefix="hash-bench-", dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
            shards = []
            for i in range(k):
                shard = Path(tmp) / f"model-{i:05d}.safetensors"
                with open(shard, "wb") as f:
                    for _ in range(n):
                        f.write(os.urandom(1 << 20))
                shards.append(shard)
            report(f"synthetic {k} x {n} MB", shards, bench(shards, args.rounds))
    fingerprint_cache(args.folder)


def platform_cpu() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
        return f"{model}; sha_ni={'sha_ni' in flags} avx512f={'avx512f' in flags}"
    except (OSError, StopIteration):
        return "unknown CPU"


if __name__ == "__main__":
    main()
