"""Start-up time of the light commands, and what they import (`python -X importtime`).

Each command runs N times in a fresh process (after one unmeasured warm-up run), alternating with
`python -c pass` as the interpreter's own floor and, with --rev, with the same command from quantkit
at that git revision. Prints medians with min-max, and the slowest imports (cumulative) of one run.

    python benchmarks/startup.py
    python benchmarks/startup.py --rev 86989c7 --runs 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [["--help"], ["recipes", "validate", "recipes/smollm2-135m.yaml"], ["quantize", "--help"], ["validate", "--help"]]
HEAVY = ("torch", "transformers", "llmcompressor", "compressed_tensors", "numpy", "datasets")


def timed(cmd: list[str], src: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t = time.perf_counter()
    # cwd = the source: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
    subprocess.run(cmd, cwd=src, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def imports(args: list[str], src: Path) -> tuple[list[tuple[int, str]], set[str]]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "quantkit.cli.main", *args], cwd=src, env=env,
                          capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (x.strip() for x in line.split(":", 1)[1].split("|"))
            if cumulative.isdigit():
                rows.append((int(cumulative), name))
    return sorted(rows, reverse=True), {name.strip() for _, name in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rev", help="also time quantkit at this git revision (a temporary worktree)")
    args = ap.parse_args()
    sources = {"quantkit": REPO}
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        if args.rev:
            path = Path(tmp) / "rev"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), args.rev], check=True,
                           capture_output=True)
            sources[f"quantkit@{args.rev}"] = path
        try:
            floor = [timed([sys.executable, "-c", "pass"], REPO) for _ in range(args.runs)]
            print(f"python -c pass: median {statistics.median(floor):.3f} s ({min(floor):.3f}-{max(floor):.3f})")
            for command in COMMANDS:
                for label, src in sources.items():
                    cmd = [sys.executable, "-m", "quantkit.cli.main", *command]
                    timed(cmd, src)  # warm the page cache and .pyc files
                    runs = [timed(cmd, src) for _ in range(args.runs)]
                    top, names = imports(command, src)
                    heavy = sorted(names & set(HEAVY))
                    print(f"quantkit {' '.join(command):45s} {label:20s} median {statistics.median(runs):.3f} s "
                          f"({min(runs):.3f}-{max(runs):.3f}); heavy imports: {', '.join(heavy) or 'none'}")
                    print("    slowest imports (cumulative ms): " + ", ".join(f"{n} {us / 1000:.0f}" for us, n in top[:4]))
        finally:
            if args.rev:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(Path(tmp) / "rev")],
                               capture_output=True)


if __name__ == "__main__":
    main()
