"""Peak memory of `quantkit validate` against model size, measured in one run: random Llamas
(quantkit.testing.build_tiny_llama, --layers layers, intermediate size 4 x hidden, the tiny 512-token
tokenizer) of growing width, one FP8 artifact each (round-to-nearest, data-free), each validated in a
fresh subprocess (serve check off, CPU) with the working tree (one model in memory; the reference cache
is cold, every width being a new base) and with the lockstep code at --before (base and artifact
loaded together; see validate_before_after.py). Prints peak RSS against the fp32 base size and the
slope of each line (RSS bytes per byte of base weights); plots both to --plot if matplotlib imports.

    python benchmarks/validate_memory_scaling.py                          # hidden 256 512 1024 2048, ~ 5-10 min
    python benchmarks/validate_memory_scaling.py --widths 256 512 --max-tokens 256
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from validate_before_after import REPO, measure, old_tree, validate_cmd

RECIPE = """name: scale-{hidden}
model: {model}
output_dir: {out}
calibration: {{source: 'builtin:mixed', num_samples: 8, seq_len: 64}}
outputs:
  - {{method: fp8, name: fp8-{hidden}}}
"""


def weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not importable: no plot")
        return
    base = [r["base"] / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(base, [r["after"] / 1e6 for r in rows], "o-", label="after: reference, one model in memory")
    ax.plot(base, [r["before"] / 1e6 for r in rows], "s-", label="before: base and artifact together")
    ax.plot(base, base, ":", color="grey", label="fp32 base weights")
    ax.set_xlabel("base model weights, fp32 (MB)")
    ax.set_ylabel("peak RSS of validate (MB)")
    ax.set_title("quantkit validate: peak memory against model size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--before", default="3df14a2", help="git revision of the lockstep code")
    ap.add_argument("--plot", type=Path, default=Path("/tmp/validate_memory_scaling.png"))
    args = ap.parse_args()

    old = {"PYTHONPATH": str(old_tree(args.before))}
    with tempfile.TemporaryDirectory(prefix="validate-scaling-") as tmp:
        os.environ["QUANTKIT_CACHE"] = str(Path(tmp) / "cache")  # this process and the children: no stored references
        os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
        import quantkit
        from quantkit.testing import build_tiny_llama, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        rows = []
        for hidden in args.widths:
            model = build_tiny_llama(Path(tmp) / f"llama-{hidden}", hidden_size=hidden, intermediate_size=4 * hidden,
                                     num_layers=args.layers, tokenizer=tokenizer)
            recipe = RECIPE.format(hidden=hidden, model=model, out=Path(tmp) / "out")
            [art] = quantkit.quantize(quantkit.parse_recipe(recipe))
            cmd = validate_cmd(art.path, args.context, args.context // 2, args.max_tokens)
            _, after, _ = measure(cmd, {"PYTHONPATH": str(REPO)})
            _, before, _ = measure(cmd, old)
            rows.append({"hidden": hidden, "base": weight_bytes(model), "artifact": weight_bytes(art.path),
                         "after": after, "before": before})
            print(f"  hidden {hidden}: after {after / 1e6:.0f} MB, before {before / 1e6:.0f} MB", flush=True)

    print(f"\n{'hidden':>6s} {'params M':>8s} {'base MB':>8s} {'art MB':>7s} {'after MB':>9s} {'after/base':>10s} "
          f"{'before MB':>9s} {'before/base':>11s}")
    for r in rows:
        print(f"{r['hidden']:6d} {r['base'] / 4e6:8.1f} {r['base'] / 1e6:8.1f} {r['artifact'] / 1e6:7.1f} "
              f"{r['after'] / 1e6:9.0f} {r['after'] / r['base']:10.2f} {r['before'] / 1e6:9.0f} {r['before'] / r['base']:11.2f}")
    if len(rows) > 1:
        span = rows[-1]["base"] - rows[0]["base"]
        for key in ("after", "before"):
            print(f"slope {key:6s}: {(rows[-1][key] - rows[0][key]) / span:.2f} bytes of peak RSS per byte of fp32 base weights")
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
