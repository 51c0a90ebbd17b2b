"""Peak memory of `quantkit quantize` against model size, in host RAM (`model.offload: none`) and with
compressed-tensors disk offload (`model.offload: disk`): random Llamas of growing depth (width 512),
RTN W4A16 g64 (and GPTQ with --method gptq), each run a fresh process; the peak is the manifest's
sampled RSS. Writes a table (markdown), the rows (JSON) and a PNG plot.

    python benchmarks/offload_memory.py                       # 4, 8, 16, 32 layers
    python benchmarks/offload_memory.py --layers 4,16,64 --method gptq --out /tmp/offload
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUTPUTS = {"rtn": "{method: rtn, name: q, scheme: W4A16, group_size: 64}",
           "gptq": "{method: gptq, name: q, scheme: W4A16, group_size: 64}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="4,8,16,32")
    ap.add_argument("--method", choices=sorted(OUTPUTS), default="rtn")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    from quantkit.testing import build_tiny_llama, build_tiny_tokenizer

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-offload-") as tmp:
        tmp = Path(tmp)
        tok = build_tiny_tokenizer()
        for n in (int(x) for x in args.layers.split(",")):
            model = build_tiny_llama(tmp / f"l{n}", hidden_size=512, intermediate_size=1408, num_layers=n, tokenizer=tok)
            size = sum(p.stat().st_size for p in model.glob("*.safetensors"))
            row = {"layers": n, "model_bytes": size}
            for offload in ("none", "disk"):
                out = tmp / f"out-{offload}-{n}"
                recipe = tmp / f"r-{offload}-{n}.yaml"
                recipe.write_text(f"name: o\nmodel: {{source: {model}, offload: {offload}}}\noutput_dir: {out}\n"
                                  "calibration: {num_samples: 16, seq_len: 64}\n"
                                  f"outputs: [{OUTPUTS[args.method]}]\n")
                proc = subprocess.run([sys.executable, "-m", "quantkit.cli.main", "quantize", str(recipe), "--progress", "none"],
                                      capture_output=True, text=True, cwd=REPO)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-3000:])
                manifest = json.loads((out / "q" / "quantkit.json").read_text())
                row[f"{offload}_peak_bytes"] = manifest["peak_rss_bytes"]
                row[f"{offload}_s"] = manifest["timings_s"]["total_s"]
            rows.append(row)
            print(f"{n:3d} layers, model {size / 1e6:7.1f} MB: peak in RAM {row['none_peak_bytes'] / 1e6:7.1f} MB "
                  f"({row['none_s']:.1f} s), disk offload {row['disk_peak_bytes'] / 1e6:7.1f} MB ({row['disk_s']:.1f} s)",
                  flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    lines = ["| layers | model (fp32) | peak RSS in RAM | peak RSS, disk offload | output time in RAM "
             "| output time, disk offload |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['layers']} | {r['model_bytes'] / 1e6:.0f} MB | {r['none_peak_bytes'] / 1e6:.0f} MB | "
              f"{r['disk_peak_bytes'] / 1e6:.0f} MB | {r['none_s']:.1f} s | {r['disk_s']:.1f} s |" for r in rows]
    (args.out / f"offload_memory_{args.method}.md").write_text("\n".join(lines) + "\n")
    (args.out / f"offload_memory_{args.method}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = [r["model_bytes"] / 1e6 for r in rows]
    ax.plot(x, [r["none_peak_bytes"] / 1e6 for r in rows], "o-", label="in host RAM")
    ax.plot(x, [r["disk_peak_bytes"] / 1e6 for r in rows], "s-", label="disk offload")
    ax.set_xlabel("model size (MB, float32)")
    ax.set_ylabel("peak RSS (MB)")
    ax.set_title(f"{args.method.upper()} W4A16: peak memory against model size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / f"offload_memory_{args.method}.png", dpi=120)
    print(f"wrote {args.out / f'offload_memory_{args.method}.png'}")


if __name__ == "__main__":
    main()
