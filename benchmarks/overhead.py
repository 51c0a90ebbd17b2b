"""Overhead of `quantkit quantize` against llm-compressor's `oneshot` called by hand.

Both variants quantize the same float checkpoint with the same modifiers on the same token ids
and save a compressed-tensors checkpoint. Each run is a fresh process (so peak RSS is per run,
from wait4), the variants alternate within a round and the order flips every round, all in one
invocation of this script. Printed: per-run wall, the oneshot phase alone (quantkit's manifest
`timings_s.quantize_s` against the same span timed around the raw call) and peak RSS; then the
medians, their spread (min-max) and the ratios quantkit / oneshot.

    python benchmarks/overhead.py                                   # GPTQ and FP8 on SmolLM2, 3 rounds
    python benchmarks/overhead.py --methods gptq --samples 64 --seq-len 256 --rounds 5
    python benchmarks/overhead.py --rev HEAD~1                      # before/after: quantkit at REV too
    python benchmarks/overhead.py --model /path/to/float-llama      # e.g. a random 1B Llama on a GPU machine

`--rev` runs a third variant, quantkit as of that git revision (from a temporary worktree), so a
fix is measured against the code before it in the same run.
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
OUTPUTS = {
    "gptq": "{name: bench-gptq, method: gptq, scheme: W4A16_ASYM, group_size: 64}",
    "fp8": "{name: bench-fp8, method: fp8, scheme: FP8_DYNAMIC}",
}
RECIPE = """
name: bench
model: {model}
calibration: {{source: 'builtin:mixed', num_samples: {samples}, seq_len: {seq_len}}}
outputs:
  - {output}
"""


def run_oneshot(recipe_path: Path, out: Path, timings: Path) -> None:
    """What a user would write by hand: same model folder, modifiers, token ids, oneshot arguments and saves."""
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import quantkit
    from quantkit.engines.llmcompressor import LLMCompressorEngine
    from quantkit.sources.calibration import build_calibration
    from quantkit.sources.models import resolve_model

    recipe = quantkit.load_recipe(recipe_path)
    resolved = resolve_model(recipe.model)  # the cached float folder: no conversion, no hashing (cached)
    output = recipe.outputs[0]
    engine = LLMCompressorEngine()
    model = AutoModelForCausalLM.from_pretrained(str(resolved.path), dtype=getattr(torch, recipe.model.dtype))
    tok = AutoTokenizer.from_pretrained(str(resolved.path))
    kwargs: dict = dict(model=model, processor=tok, recipe=engine.modifiers(output), log_dir=None)
    if engine.needs_calibration(output):
        cal = build_calibration(recipe.calibration, tok)
        kwargs.update(dataset=cal.to_dataset(), num_calibration_samples=len(cal.input_ids),
                      max_seq_length=cal.spec.seq_len, shuffle_calibration_samples=False, pipeline="sequential")
    else:
        kwargs.update(pipeline="datafree")
    if not torch.cuda.is_available():  # the one CPU workaround quantkit applies (llmcompressor_workarounds.py)
        from llmcompressor.pipelines.cache import IntermediatesCache

        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    t0 = time.perf_counter()
    oneshot(**kwargs)
    quantize_s = time.perf_counter() - t0
    model.save_pretrained(out / output.name, save_compressed=True)
    tok.save_pretrained(out / output.name)
    timings.write_text(json.dumps({"quantize_s": quantize_s}))


def quantkit_command(src: Path, recipe: Path, out: Path) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONPATH": str(src)}  # a worktree's quantkit shadows the installed one
    return [sys.executable, "-m", "quantkit.cli.main", "quantize", str(recipe), "-o", str(out), "--progress", "none"], env


def measure(variant: str, src: Path, recipe: Path, work: Path) -> dict:
    out, timings = work / "out", work / "timings.json"
    env = {**os.environ, "LLM_COMPRESSOR_LOG_LEVEL": "ERROR", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": str(REPO)}  # this checkout's quantkit, not whichever one is installed
    if variant == "oneshot":
        cmd = [sys.executable, __file__, "--child-oneshot", str(recipe), str(out), str(timings)]
    else:
        cmd, extra = quantkit_command(src, recipe, out)
        env.update(PYTHONPATH=extra["PYTHONPATH"])
    start = time.perf_counter()
    # cwd = the source: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
    proc = subprocess.Popen(cmd, env=env, cwd=src, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{variant} run failed:\n{err[-3000:]}")
    if variant == "oneshot":
        phase = json.loads(timings.read_text())["quantize_s"]
    else:
        manifest = json.loads(next(out.glob("*/quantkit.json")).read_text())
        phase = manifest["timings_s"]["quantize_s"]
    return {"wall_s": wall, "quantize_s": phase, "peak_rss_bytes": usage.ru_maxrss * 1024}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} ({min(values):.2f}-{max(values):.2f})"


def worktree(rev: str, parent: Path) -> Path:
    path = parent / f"quantkit-{rev.replace('/', '_').replace('~', '_')}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), rev], check=True,
                   capture_output=True)
    return path


def compare(method: str, args, tmp: Path, sources: dict[str, Path]) -> dict:
    recipe = tmp / f"{method}.yaml"
    recipe.write_text(RECIPE.format(model=args.model, samples=args.samples, seq_len=args.seq_len, output=OUTPUTS[method]))
    variants = ["oneshot", *sources]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for variant in (variants if r % 2 == 0 else variants[::-1]):
            with tempfile.TemporaryDirectory(dir=tmp) as work:
                m = measure(variant, sources.get(variant, REPO), recipe, Path(work))
            runs[variant].append(m)
            print(f"{method} round {r + 1} {variant:18s} wall {m['wall_s']:7.2f} s  oneshot phase {m['quantize_s']:7.2f} s  "
                  f"peak RSS {m['peak_rss_bytes'] / 1e9:5.2f} GB", flush=True)
    table = {}
    for variant, ms in runs.items():
        table[variant] = {k: {"median": statistics.median(m[k] for m in ms), "min": min(m[k] for m in ms),
                              "max": max(m[k] for m in ms)} for k in ("wall_s", "quantize_s", "peak_rss_bytes")}
    print(f"\n{method}: median (min-max) over {args.rounds} rounds")
    print(f"{'variant':18s} {'wall s':>22s} {'oneshot phase s':>22s} {'peak RSS GB':>22s}")
    for variant, ms in runs.items():
        rss = [m["peak_rss_bytes"] / 1e9 for m in ms]
        print(f"{variant:18s} {spread([m['wall_s'] for m in ms]):>22s} {spread([m['quantize_s'] for m in ms]):>22s} "
              f"{spread(rss):>22s}")
    ratios = {}
    for variant in sources:
        ratios[variant] = {k: round(table[variant][k]["median"] / table["oneshot"][k]["median"], 3)
                           for k in ("wall_s", "quantize_s", "peak_rss_bytes")}
        print(f"ratio {variant} / oneshot: wall {ratios[variant]['wall_s']:.3f}  oneshot phase "
              f"{ratios[variant]['quantize_s']:.3f}  peak RSS {ratios[variant]['peak_rss_bytes']:.3f}")
    paired = {variant: paired_ratios([m["wall_s"] for m in runs[variant]], [m["wall_s"] for m in runs["oneshot"]])
              for variant in sources}
    for variant, per_round in paired.items():
        print(f"paired wall ratio {variant} / oneshot (each round's pair, run back to back): {spread(per_round).strip()}")
    return {"runs": runs, "medians": table, "ratios": ratios, "paired_wall_ratios": paired}


def paired_ratios(values: list[float], baseline: list[float]) -> list[float]:
    """Each round's ratio: the variants of a round run back to back, so a slow spell of a shared host
    weighs on both sides of a pair, where it widens the spread of each median."""
    return [round(v / b, 3) for v, b in zip(values, baseline)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="gptq,fp8", help="comma-separated: " + ", ".join(OUTPUTS))
    ap.add_argument("--model", default="smollm2-135m", help="a built-in name or a float checkpoint folder")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rev", action="append", default=[], help="also run quantkit at this git revision (repeatable)")
    ap.add_argument("--json", type=Path, help="write every run and the summary here")
    ap.add_argument("--child-oneshot", nargs=3, metavar=("RECIPE", "OUT", "TIMINGS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_oneshot:
        run_oneshot(*(Path(p) for p in args.child_oneshot))
        return
    import quantkit
    from quantkit.sources.models import resolve_model

    # the one-time GGUF dequantization and base fingerprint are cached before the first timed run
    resolve_model(quantkit.parse_recipe(RECIPE.format(model=args.model, samples=1, seq_len=8, output=OUTPUTS["fp8"])).model)
    results = {"config": {k: getattr(args, k) for k in ("model", "samples", "seq_len", "rounds", "rev")}}
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
        tmp = Path(tmp)
        sources = {"quantkit": REPO, **{f"quantkit@{rev}": worktree(rev, tmp) for rev in args.rev}}
        try:
            for method in args.methods.split(","):
                results[method] = compare(method.strip(), args, tmp, sources)
        finally:
            for rev_src in list(sources.values())[1:]:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(rev_src)], capture_output=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
