"""vLLM serving figures for the float base and every artifact of a run, measured in one run.

For each target: whether vLLM loads it (else vLLM's reason), time to ready, output tokens/s and
TTFT/TPOT p50/p95 at concurrency 1 and 8, and n-gram speculative speedup with acceptance rate
and identical-output count. Slow kernels (FP8 on CPU runs ~25x slower) get a shorter workload
with --short NAME (the workload is printed per row).

    python benchmarks/serve_matrix.py out/ [--short smollm2-135m-fp8-dynamic] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fmt(v, spec=".1f", scale=1.0):
    return "-" if v is None else format(v * scale, spec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--short", action="append", default=[], help="artifact names that get 2 prompts x 32 tokens")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from quantkit.artifact import MANIFEST_NAME, Artifact
    from quantkit.serving.smoke import ServeOptions
    from quantkit.serving.verb import run_serve_test

    targets = []
    for folder in sorted(d for d in args.run.iterdir() if (d / MANIFEST_NAME).is_file()):
        if not targets:
            targets.append(("float base", Path(Artifact.load(folder).manifest.base_model.path)))
        targets.append((folder.name, folder))
    rows, docs = [], {}
    for name, path in targets:
        short = name in args.short
        opts = ServeOptions(max_tokens=32 if short else args.max_tokens, prompts=2 if short else None)
        report = run_serve_test(path, opts)
        r = report.result
        docs[name] = report.to_dict()
        if r.status != "measured":
            rows.append(f"| {name} | no: {r.reason} |")
            continue
        sd = r.speculative
        perf = r.performance
        cells = [name, f"yes ({r.quantization or 'none'}, {r.dtype})", f"{r.ready_s:.0f}",
                 f"{opts.prompts or 8}×{opts.max_tokens}"]
        for c in ("1", "8"):
            p = perf[c]
            cells += [fmt(p["output_tokens_per_s"]), f"{fmt(p['ttft_p50_s'], '.0f', 1000)}/{fmt(p['ttft_p95_s'], '.0f', 1000)}",
                      f"{fmt(p['tpot_p50_s'], '.0f', 1000)}/{fmt(p['tpot_p95_s'], '.0f', 1000)}"]
        cells += [f"{fmt(sd.get('speedup', {}).get('1'), '.2f')}x / {fmt(sd.get('speedup', {}).get('8'), '.2f')}x",
                  fmt(sd.get("acceptance_rate"), ".0%"),
                  fmt(sd.get("mean_acceptance_length"), ".2f"),
                  f"{sd.get('compared_outputs', 0) - sd.get('mismatches', 0)}/{sd.get('compared_outputs', 0)}",
                  f"{r.greedy.get('agreeing_tokens')}/{r.greedy.get('tokens')}"]
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    print("| target | loads in vLLM | ready s | workload | c1 tok/s | c1 TTFT p50/p95 ms | c1 TPOT p50/p95 ms | "
          "c8 tok/s | c8 TTFT p50/p95 ms | c8 TPOT p50/p95 ms | ngram speedup c1 / c8 | accepted | mean acc. len | "
          "identical | greedy = transformers |")
    print("|---|---|---:|---|---:|---|---|---:|---|---|---|---:|---:|---|---|")
    print("\n".join(rows))
    if args.json:
        args.json.write_text(json.dumps(docs, indent=2) + "\n")


if __name__ == "__main__":
    main()
