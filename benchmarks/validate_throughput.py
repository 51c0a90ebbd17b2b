"""Scoring throughput of validate's passes against lm-eval and llama.cpp, measured in one run, on the
same text (the built-in prose domain, cut to --tokens scored tokens) and the same context:

  quantkit base reference    build_reference: float32 base, windows every context/2, full-vocab 16-bit rows written
  quantkit artifact pass     score_against_reference: --artifact (default: the base itself) against that reference
  quantkit perplexity        perplexity(): the base alone, same windows, no reference
  ... stride = context       the same with lm-eval's windows (each restarts cold), like for like with lm-eval
  lm-eval rolling loglik     HFLM.loglikelihood_rolling, float32, max_length = context (disjoint windows)
  llama-perplexity F32       the base converted to an F32 GGUF, -c context (scores the 2nd half of each chunk)

"forward" counts the tokens the model ran over, "scored" the tokens whose log-probability counts
toward perplexity; each tool reports its own perplexity (windows differ, so do the values). Torch
rows exclude model loading; the llama.cpp row is the whole tool run (process start, mmap load,
tokenization included). All on CPU with every core.

    python benchmarks/validate_throughput.py [--tokens 4096] [--context 512]
    python benchmarks/validate_throughput.py --artifact /tmp/smol-art/smollm2-135m-gptq-w4a16
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096, help="scored tokens of quantkit's windows")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--artifact", type=Path, help="compressed-tensors artifact for the artifact pass (default: the base)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each pass; the fastest counts")
    args = ap.parse_args()

    def best(run) -> tuple[float, object]:
        """(fastest seconds, result) of `run()` over --repeat runs."""
        timings = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            result = run()
            timings.append(time.perf_counter() - t0)
        return min(timings), result

    import numpy as np
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from quantkit.progress import NullReporter
    from quantkit.recipe import ModelSpec
    from quantkit.runtimes.reference import BaseReference, build_reference
    from quantkit.runtimes.transformers import TransformersModel, perplexity, score_against_reference, windows
    from quantkit.sources.calibration import builtin_domain_text
    from quantkit.sources.models import resolve_model
    from quantkit.toolchains.llamacpp import converted_base, require_toolchain

    ctx, stride = args.context, args.context // 2
    resolved = resolve_model(ModelSpec(source="smollm2-135m"))
    base = TransformersModel(resolved.path)
    ids = base.tokenize(builtin_domain_text("prose", args.tokens * 10))[: args.tokens + ctx - stride]
    text = base.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
    ids = base.tokenize(text)
    spans = windows(len(ids), ctx, stride)
    forward = sum(e - b for b, e, _ in spans)
    rows = []  # (name, seconds, forward tokens, scored tokens, perplexity)

    with tempfile.TemporaryDirectory(prefix="validate-throughput-") as tmp:
        sec, _ = best(lambda: build_reference(base, ids, spans, Path(tmp)))
        nll = np.fromfile(Path(tmp) / "nll.f32", dtype="<f4")
        rows.append(("quantkit base reference", sec, forward, nll.size, math.exp(nll.mean())))

        artifact = TransformersModel(args.artifact) if args.artifact else base
        sec, s = best(lambda: score_against_reference(artifact, ids, BaseReference(Path(tmp)), "prose", ctx, stride))
        name = f"quantkit artifact pass ({args.artifact.name if args.artifact else 'the base'})"
        rows.append((name, sec, forward, s.n_tokens, s.ppl))

        sec, (ppl, n) = best(lambda: perplexity(base, ids, ctx, stride))
        rows.append(("quantkit perplexity", sec, forward, n, ppl))

        # lm-eval's rule (each window restarts cold, every token scored once): like for like with its row
        cold = windows(len(ids), ctx, ctx)
        sec, (ppl, n) = best(lambda: perplexity(base, ids, spans=cold))
        rows.append(("quantkit perplexity, stride = context (lm-eval's rule)", sec, sum(e - b for b, e, _ in cold), n, ppl))

        lm = HFLM(pretrained=str(resolved.path), dtype="float32", max_length=ctx, batch_size=1, device="cpu")
        lm_ids = lm.tok_encode(text)
        lm_windows = [make_disjoint_window(w) for w in get_rolling_token_windows(lm_ids, lm.prefix_token_id, ctx, 1)]
        sec, [ll] = best(lambda: lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True))
        rows.append(("lm-eval rolling loglik", sec,
                     sum(min(len(a) + len(b), ctx + 1) - 1 for a, b in lm_windows), len(lm_ids), math.exp(-ll / len(lm_ids))))

        tc = require_toolchain()
        gguf = converted_base(tc, resolved, "F32", NullReporter())
        text_file = Path(tmp) / "text.txt"
        text_file.write_text(text, encoding="utf-8")
        sec, result = best(lambda: tc.perplexity(gguf, text_file, ctx=ctx))
        chunks = result["chunks"]
        rows.append(("llama-perplexity F32", sec, chunks * ctx, chunks * (ctx - ctx // 2 - 1), result["ppl"]))

    print(f"context {ctx}, quantkit stride {stride}; torch threads {torch.get_num_threads()}, llama.cpp threads "
          f"{os.cpu_count()}\n")
    print(f"{'pass':52s} {'seconds':>8s} {'forward':>8s} {'scored':>7s} {'scored tok/s':>12s} {'fwd tok/s':>10s} {'ppl':>9s}")
    for name, sec, fwd, scored, ppl in rows:
        print(f"{name:52s} {sec:8.2f} {fwd:8d} {scored:7d} {scored / sec:12.1f} {fwd / sec:10.1f} {ppl:9.4f}")


if __name__ == "__main__":
    main()
