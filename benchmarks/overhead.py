"""Overhead of `quantkit quantize` against calling llm-compressor's `oneshot` directly.

Both variants quantize the same float checkpoint with the same modifiers on the same
tokenized calibration set and save a compressed-tensors checkpoint; each runs in its own
fresh subprocess (so peak RSS is per variant), alternating, in one invocation of this
script. The ratio quantkit/oneshot is printed for wall time and peak RSS.

    python benchmarks/overhead.py                     # GPTQ W4A16 g64, 16 x 128 tokens, 1 round
    python benchmarks/overhead.py --samples 64 --seq-len 256 --rounds 2
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

RECIPE = """
name: bench
model: smollm2-135m
calibration: {{source: 'builtin:mixed', num_samples: {samples}, seq_len: {seq_len}}}
outputs:
  - {{name: bench-gptq, method: gptq, scheme: W4A16_ASYM, group_size: 64}}
"""


def run_quantkit(recipe_text: str, out: Path) -> None:
    import quantkit

    quantkit.quantize(quantkit.parse_recipe(recipe_text), output_dir=out, force=True)


def run_oneshot(recipe_text: str, out: Path) -> None:
    """What a user would write by hand: same model folder, modifiers, tokens and save call."""
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import quantkit
    from quantkit.engines.llmcompressor import LLMCompressorEngine
    from quantkit.engines.llmcompressor_workarounds import cpu_compat
    from quantkit.sources.calibration import build_calibration
    from quantkit.sources.models import resolve_model

    recipe = quantkit.parse_recipe(recipe_text)
    resolved = resolve_model(recipe.model)  # cached float folder: no conversion here
    output = recipe.outputs[0]
    model = AutoModelForCausalLM.from_pretrained(str(resolved.path), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(resolved.path))
    cal = build_calibration(recipe.calibration, tok)
    with cpu_compat():
        oneshot(
            model=model,
            processor=tok,
            recipe=LLMCompressorEngine().modifiers(output),
            dataset=cal.to_dataset(),
            num_calibration_samples=len(cal.input_ids),
            max_seq_length=cal.spec.seq_len,
            shuffle_calibration_samples=False,
            pipeline="sequential",
        )
    model.save_pretrained(out / output.name, save_compressed=True)
    tok.save_pretrained(out / output.name)


def child(variant: str, recipe_text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (run_quantkit if variant == "quantkit" else run_oneshot)(recipe_text, Path(tmp))


def measure(variant: str, recipe_text: str) -> tuple[float, int]:
    env = {**os.environ, "LLM_COMPRESSOR_LOG_LEVEL": "ERROR", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", variant, "--recipe", recipe_text], env=env,
                            stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{variant} run failed")
    return wall, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--child", choices=["quantkit", "oneshot"])
    ap.add_argument("--recipe")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.recipe)
        return
    recipe_text = RECIPE.format(samples=args.samples, seq_len=args.seq_len)
    # warm the model cache so neither variant pays the one-time GGUF dequantization
    import quantkit
    from quantkit.sources.models import resolve_model

    resolve_model(quantkit.parse_recipe(recipe_text).model)
    results: dict[str, list[tuple[float, int]]] = {"oneshot": [], "quantkit": []}
    for r in range(args.rounds):
        for variant in (("oneshot", "quantkit") if r % 2 == 0 else ("quantkit", "oneshot")):
            wall, rss = measure(variant, recipe_text)
            results[variant].append((wall, rss))
            print(f"round {r + 1} {variant:9s} wall {wall:7.1f} s  peak RSS {rss / 1e9:5.2f} GB", flush=True)
    med = {k: (statistics.median(w for w, _ in v), statistics.median(m for _, m in v)) for k, v in results.items()}
    summary = {
        "config": {"method": "gptq W4A16_ASYM g64", "samples": args.samples, "seq_len": args.seq_len, "rounds": args.rounds},
        "oneshot": {"wall_s": round(med["oneshot"][0], 2), "peak_rss_bytes": med["oneshot"][1]},
        "quantkit": {"wall_s": round(med["quantkit"][0], 2), "peak_rss_bytes": med["quantkit"][1]},
        "ratio_wall": round(med["quantkit"][0] / med["oneshot"][0], 3),
        "ratio_peak_rss": round(med["quantkit"][1] / med["oneshot"][1], 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
