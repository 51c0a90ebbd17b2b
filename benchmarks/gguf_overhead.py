"""Overhead of `quantkit quantize` for a GGUF output against llama.cpp's own tools run by hand.

By hand, with the same pinned llama.cpp build quantkit uses, the same arguments and threads:
`convert_hf_to_gguf.py MODEL --outtype f16`, `llama-imatrix` on the calibration text (the same
tokens, decoded: what quantkit hands it), then `llama-quantize --imatrix` once per type. quantkit's
F16 conversion cache entry is deleted before each of its runs, so both variants convert. Each run
is timed from process start to the last file written; variants alternate and the order flips every
round. Prints each run, medians with min-max, and the ratio quantkit / by hand.

    python benchmarks/gguf_overhead.py                          # Q4_K_M and Q8_0 with an imatrix, 3 rounds
    python benchmarks/gguf_overhead.py --types Q4_K_M --samples 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = """
name: bench
model: {model}
calibration: {{source: 'builtin:mixed', num_samples: {samples}, seq_len: {seq_len}}}
outputs:
  - {{name: bench-gguf, method: gguf, types: [{types}], imatrix: true}}
"""


def by_hand(tc, model_dir: Path, text: Path, work: Path, types: list[str], seq_len: int, chunks: int, threads: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(tc.root / "gguf-py")}
    base = work / "base-f16.gguf"
    subprocess.run([sys.executable, str(tc.converter), str(model_dir), "--outtype", "f16", "--outfile", str(base)],
                   check=True, capture_output=True, env=env)
    imatrix = work / "imatrix.gguf"
    subprocess.run([str(tc.tool("llama-imatrix")), "-m", str(base), "-f", str(text), "-o", str(imatrix), "-c", str(seq_len),
                    "--chunks", str(chunks), "-t", str(threads), "--no-ppl", "--no-escape"], check=True, capture_output=True)
    for qtype in types:
        subprocess.run([str(tc.tool("llama-quantize")), "--imatrix", str(imatrix), str(base), str(work / f"{qtype}.gguf"),
                        qtype, str(threads)], check=True, capture_output=True)


def run_quantkit(recipe: Path, out: Path, f16_cache: list[Path], src: Path = REPO) -> None:
    for p in f16_cache:
        p.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    # cwd = the source: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
    proc = subprocess.run([sys.executable, "-m", "quantkit.cli.main", "quantize", str(recipe), "-o", str(out),
                           "--progress", "none"], capture_output=True, text=True, env=env, cwd=src)
    if proc.returncode != 0:
        raise SystemExit(f"quantkit failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--types", default="Q4_K_M,Q8_0")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--rev", help="also run quantkit at this git revision (a temporary worktree): before/after")
    args = ap.parse_args()

    import quantkit
    from quantkit.engines.gguf import threads
    from quantkit.files import cache_dir
    from quantkit.sources.calibration import build_calibration
    from quantkit.sources.models import load_tokenizer, resolve_model
    from quantkit.toolchains.llamacpp import require_toolchain

    types = [t.strip() for t in args.types.split(",")]
    recipe_text = RECIPE.format(model=args.model, samples=args.samples, seq_len=args.seq_len, types=", ".join(types))
    recipe = quantkit.parse_recipe(recipe_text)
    tc = require_toolchain()  # built once and cached: not part of either variant's time
    model = resolve_model(recipe.model)
    tok = load_tokenizer(model)
    cal = build_calibration(recipe.calibration, tok)
    f16_cache = list((cache_dir() / "gguf").glob(f"{model.fingerprint[:16]}-F16-*.gguf"))
    commit = tc.info["llama_cpp_commit"][:9]
    f16_cache = sorted(set(f16_cache) | {cache_dir() / "gguf" / f"{model.fingerprint[:16]}-F16-{commit}.gguf"})
    print(f"llama.cpp {commit}, {threads()} threads; {args.samples} x {args.seq_len} calibration tokens; types {types}")

    variants = ["by hand", "quantkit"] + ([f"quantkit@{args.rev}"] if args.rev else [])
    walls: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as tmp:
        tmp = Path(tmp)
        sources = {"quantkit": REPO}
        if args.rev:
            sources[variants[-1]] = tmp / "rev"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(tmp / "rev"), args.rev],
                           check=True, capture_output=True)
        (tmp / "recipe.yaml").write_text(recipe_text)
        text = tmp / "calibration.txt"  # what a user would have prepared: the same tokens as text
        text.write_text("".join(tok.decode(ids) for ids in cal.input_ids), encoding="utf-8")
        try:
            for r in range(args.rounds):
                for variant in (variants if r % 2 == 0 else variants[::-1]):
                    with tempfile.TemporaryDirectory(dir=tmp) as work:
                        t = time.perf_counter()
                        if variant == "by hand":
                            by_hand(tc, model.path, text, Path(work), types, args.seq_len, len(cal.input_ids), threads())
                        else:
                            run_quantkit(tmp / "recipe.yaml", Path(work) / "out", f16_cache, sources[variant])
                        walls[variant].append(time.perf_counter() - t)
                    print(f"round {r + 1} {variant:18s} {walls[variant][-1]:7.2f} s", flush=True)
        finally:
            if args.rev:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "rev")], capture_output=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    for k, v in walls.items():
        print(f"{k:18s} median {med[k]:7.2f} s ({min(v):.2f}-{max(v):.2f})")
    ratios = {k: round(med[k] / med["by hand"], 3) for k in variants[1:]}
    for k, ratio in ratios.items():
        print(f"ratio {k} / by hand: {ratio:.3f}")
    # each round's pair runs back to back: a slow spell of a shared host weighs on both sides of it
    paired = {k: [round(v / b, 3) for v, b in zip(walls[k], walls["by hand"])] for k in variants[1:]}
    for k, per_round in paired.items():
        print(f"paired ratio {k} / by hand (per round): median {statistics.median(per_round):.3f} "
              f"({min(per_round):.3f}-{max(per_round):.3f})")
    if args.json:
        args.json.write_text(json.dumps({"config": vars(args) | {"json": None}, "walls_s": walls, "ratios": ratios,
                                         "paired_ratios": paired},
                                        indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
