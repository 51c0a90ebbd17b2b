"""Resume cost: a full quantize run against a run SIGKILLed while output k+1 of n is being made and then
re-run with the same command, measured in one process.

    python benchmarks/resume_time.py RECIPE.yaml --kill-after 1 [--set calibration.num_samples=16 ...]

Prints the full run's time, the time the killed run had spent, the re-run's time, and the re-run's
time as a fraction of the full run (what was not lost), per k.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import quantkit


def quantize_cmd(recipe: Path, out: Path, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "quantkit.cli.main", "quantize", str(recipe), "-o", str(out), "--progress", "none"]
    for ov in overrides:
        cmd += ["--set", ov]
    return cmd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--kill-after", type=int, action="append", help="outputs finished before the kill (repeatable)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    names = [o.name for o in quantkit.load_recipe(args.recipe, args.overrides).outputs]
    with tempfile.TemporaryDirectory(prefix="resume-bench-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        subprocess.run(quantize_cmd(args.recipe, tmp / "full", args.overrides), check=True, capture_output=True)
        full = time.perf_counter() - t
        print(f"full run of {len(names)} outputs: {full:.1f} s")
        for k in args.kill_after or [1]:
            out = tmp / f"killed-{k}"
            t = time.perf_counter()
            proc = subprocess.Popen(quantize_cmd(args.recipe, out, args.overrides), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            victim = f".{names[k]}.partial-"
            while proc.poll() is None and not (out.exists() and any(p.name.startswith(victim) for p in out.iterdir())):
                time.sleep(0.05)
            proc.kill()
            proc.wait()
            spent = time.perf_counter() - t
            t = time.perf_counter()
            subprocess.run(quantize_cmd(args.recipe, out, args.overrides), check=True, capture_output=True)
            rerun = time.perf_counter() - t
            print(f"killed while making output {k + 1} of {len(names)} after {spent:.1f} s; re-run {rerun:.1f} s = "
                  f"{rerun / full:.2f} of the full run (a run without resume would redo all of it: 1.00)")


if __name__ == "__main__":
    main()
