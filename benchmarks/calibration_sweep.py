"""Quantization time against calibration size, with the held-out KL divergence it buys.

For each method (GPTQ, AWQ) and each number of calibration samples, one `quantkit quantize` in a
fresh process (wall time, and the oneshot phase from the manifest), then `quantkit validate` of the
artifact (KL divergence against the float base and perplexity increase on held-out prose and code,
which calibration never sees). Writes a table (markdown), the raw rows (JSON) and a PNG plot with
time and KLD against samples, so the knee can be read off.

    python benchmarks/calibration_sweep.py                            # GPTQ and AWQ, 32..512 x 128 tokens
    python benchmarks/calibration_sweep.py --methods gptq --samples 32,128 --seq-len 256 --out /tmp/sweep
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = {
    "gptq": "{name: sweep-gptq, method: gptq, scheme: W4A16_ASYM, group_size: 64}",
    "awq": "{name: sweep-awq, method: awq, scheme: W4A16_ASYM, group_size: 64}",
}
RECIPE = """
name: sweep
model: {model}
calibration: {{source: 'builtin:mixed', num_samples: {samples}, seq_len: {seq_len}}}
outputs:
  - {output}
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLM_COMPRESSOR_LOG_LEVEL": "ERROR", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "quantkit.cli.main", *args, "--progress", "none"],
                          capture_output=True, text=True, env=env)


def point(method: str, samples: int, args, tmp: Path) -> dict:
    recipe = tmp / f"{method}-{samples}.yaml"
    recipe.write_text(RECIPE.format(model=args.model, samples=samples, seq_len=args.seq_len, output=OUTPUTS[method]))
    out = tmp / f"{method}-{samples}"
    t = time.perf_counter()
    proc = cli("quantize", str(recipe), "-o", str(out))
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"quantize {method} {samples} failed:\n{proc.stderr[-3000:]}")
    art = next(p for p in out.iterdir() if (p / "quantkit.json").is_file())
    manifest = json.loads((art / "quantkit.json").read_text())
    # the serving smoke test does not depend on the calibration size: skipped, it would double the sweep
    proc = cli("validate", str(art), "--max-tokens", str(args.eval_tokens), "--no-serve")
    if proc.returncode not in (0, 1):  # 1: a gate failed, the figures are still there
        raise SystemExit(f"validate {method} {samples} failed:\n{proc.stderr[-3000:]}")
    report = json.loads((art / "validation.json").read_text())
    domains = report["targets"][0]["domains"]
    return {
        "method": method, "samples": samples, "tokens": samples * args.seq_len, "wall_s": round(wall, 1),
        "quantize_s": manifest["timings_s"]["quantize_s"],
        "kld_mean": sum(d["kld_mean"] for d in domains) / len(domains),
        "ppl_increase": sum(d["ppl_increase"] for d in domains) / len(domains),
        "top1_agreement": sum(d["top1_agreement"] for d in domains) / len(domains),
        "by_domain": {d["domain"]: {"kld_mean": d["kld_mean"], "ppl_increase": d["ppl_increase"]} for d in domains},
    }


def table(rows: list[dict], seq_len: int) -> str:
    lines = [f"| method | samples x {seq_len} tokens | quantize wall s | oneshot phase s | held-out KLD (mean) | "
             "ppl increase | top-1 agreement |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['samples']} | {r['wall_s']:.1f} | {r['quantize_s']:.1f} | {r['kld_mean']:.4f} | "
                     f"{r['ppl_increase']:+.2%} | {r['top1_agreement']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_k) = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        xs = [r["samples"] for r in rs]
        ax_t.plot(xs, [r["wall_s"] for r in rs], marker="o", label=method.upper())
        ax_k.plot(xs, [r["kld_mean"] for r in rs], marker="o", label=method.upper())
    for ax, ylabel in ((ax_t, "quantize wall time (s)"), (ax_k, "held-out KL divergence (mean, nats)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("calibration samples")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="gptq,awq")
    ap.add_argument("--samples", default="32,64,128,256,512")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens per domain for the KLD")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--report-only", action="store_true", help="redraw the table and plot from OUT/calibration_sweep.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    raw = args.out / "calibration_sweep.json"
    if raw.is_file():
        # a sweep is extended, not restarted: points already measured with the same settings are kept
        earlier = json.loads(raw.read_text())
        if args.report_only or (earlier["seq_len"], earlier["model"]) == (args.seq_len, args.model):
            rows = earlier["rows"]
    done = {(r["method"], r["samples"]) for r in rows}
    # sizes outermost: a sweep cut short still has every method at the smaller sizes
    points = [] if args.report_only else [
        (m.strip(), int(n)) for n in args.samples.split(",") for m in args.methods.split(",") if (m.strip(), int(n)) not in done]
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        for method, samples in points:
            rows.append(point(method, samples, args, Path(tmp)))
            r = rows[-1]
            print(f"{r['method']} {r['samples']:4d} samples: wall {r['wall_s']:7.1f} s, oneshot {r['quantize_s']:7.1f} s, "
                  f"KLD {r['kld_mean']:.4f}, ppl {r['ppl_increase']:+.2%}", flush=True)
            raw.write_text(json.dumps({"seq_len": args.seq_len, "model": args.model, "rows": rows}, indent=2) + "\n")
    rows.sort(key=lambda r: (r["method"], r["samples"]))
    print(table(rows, args.seq_len))
    (args.out / "calibration_sweep.md").write_text(table(rows, args.seq_len) + "\n")
    plot(rows, args.out / "calibration_sweep.png",
         f"{args.model}: calibration size vs time and held-out KLD ({args.seq_len}-token samples)")
    print(f"wrote {args.out / 'calibration_sweep.png'}")


if __name__ == "__main__":
    main()
