"""The 2 models × 2 outputs matrix of tiny random Llamas: the local executor (worker processes) against
Ray on this machine, in the same run, and Ray's cost per job.

Both run the same four jobs two at a time (`--jobs 2`; the Ray cluster has 2 CPUs). Ray uses a
cluster started before the timing (`ray start --head` on loopback, as a team would have one), so
its start-up is reported apart. Rounds alternate; the order flips every round. Per-job overhead =
(Ray wall − local wall) / jobs: what placing a job through Ray adds on top of running it.

    python benchmarks/matrix.py                # 3 rounds
    python benchmarks/matrix.py --rounds 5 --hidden 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = """name: mx
models: [{m1}, {m2}]
output_dir: {out}
calibration: {{num_samples: 4, seq_len: 16}}
outputs:
  - {{method: fp8, name: f8}}
  - {{method: rtn, name: r4, scheme: W4A16, group_size: 32}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quantize(recipe: Path, out: Path, env: dict, *extra: str) -> tuple[float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "quantkit.cli.main", "quantize", str(recipe), "--json", *extra],
                          capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"quantize {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    rows = json.loads(proc.stdout)  # one row per job
    assert sum(r["status"] == "made" for r in rows) == 4, rows
    return wall, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=128)
    args = ap.parse_args()
    from quantkit.testing import build_tiny_llama, build_tiny_tokenizer

    ray = Path(sys.executable).with_name("ray")
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        tmp = Path(tmp)
        tok = build_tiny_tokenizer()
        models = [build_tiny_llama(tmp / f"m{i}", hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                                   tokenizer=tok, seed=i) for i in (1, 2)]
        out = tmp / "out"
        recipe = tmp / "m.yaml"
        recipe.write_text(RECIPE.format(m1=models[0], m2=models[1], out=out))
        port, temp = free_port(), Path(f"/tmp/bm-ray-{os.getpid()}")
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp / "token"), "RAY_USAGE_STATS_ENABLED": "0"}
        (tmp / "token").write_text(os.urandom(16).hex())
        t0 = time.perf_counter()
        subprocess.run([str(ray), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                        "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(temp)],
                       env=env, check=True, capture_output=True)
        start_s = time.perf_counter() - t0
        print(f"ray start --head: {start_s:.1f} s")
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        job_s: dict[str, list[float]] = {"local": [], "ray": []}
        try:
            for i in range(args.rounds):
                order = ["local", "ray"] if i % 2 == 0 else ["ray", "local"]
                for variant in order:
                    extra = ["--jobs", "2"] if variant == "local" else ["--executor", "ray", "--ray-address", f"127.0.0.1:{port}"]
                    wall, summary = quantize(recipe, out, env, *extra)
                    walls[variant].append(wall)
                    job_s[variant] += [j["seconds"] for j in summary]
                    each = ", ".join(f"{j['seconds']:.1f}" for j in summary)
                    print(f"round {i + 1} {variant:5s}: {wall:6.1f} s (jobs {each} s)", flush=True)
        finally:
            subprocess.run(["pkill", "-9", "-f", str(temp)], capture_output=True)
            shutil.rmtree(temp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"\nlocal --jobs 2: median {med['local']:.1f} s ({min(walls['local']):.1f}-{max(walls['local']):.1f}); "
          f"ray: median {med['ray']:.1f} s ({min(walls['ray']):.1f}-{max(walls['ray']):.1f})")
    inside = {k: statistics.median(v) for k, v in job_s.items()}
    per_job = (med["ray"] - med["local"]) / 4
    print(f"ratio ray / local: {med['ray'] / med['local']:.3f}; per-job overhead of Ray: {per_job:+.2f} s; "
          f"job time inside the worker: local {inside['local']:.1f} s, ray {inside['ray']:.1f} s")


if __name__ == "__main__":
    main()
