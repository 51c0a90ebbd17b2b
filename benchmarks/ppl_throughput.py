"""Evaluation throughput: quantkit's perplexity loop against lm-eval's own rolling-loglikelihood
perplexity, same model (the embedded SmolLM2-135M float checkpoint), same text, same window,
measured in one run. Prints tokens/s of both, the ratio, and both perplexities.

    python benchmarks/ppl_throughput.py [--tokens 4096] [--context 512]
"""

from __future__ import annotations

import argparse
import math
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--context", type=int, default=512)
    args = ap.parse_args()

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from quantkit.recipe import ModelSpec
    from quantkit.runtimes.transformers import TransformersModel, perplexity
    from quantkit.sources.calibration import builtin_domain_text
    from quantkit.sources.models import resolve_model

    model = resolve_model(ModelSpec(source="smollm2-135m"))
    rt = TransformersModel(model.path)
    ids = rt.tokenize(builtin_domain_text("prose", args.tokens * 8))[: args.tokens + 1]
    text = rt.tokenizer.decode(ids)

    t0 = time.perf_counter()
    ours_ppl, ours_n = perplexity(rt, ids, context=args.context, stride=args.context)
    ours_tps = ours_n / (time.perf_counter() - t0)

    lm = HFLM(pretrained=str(model.path), dtype="float32", max_length=args.context, batch_size=1, device="cpu")
    t0 = time.perf_counter()
    [ll] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    theirs_s = time.perf_counter() - t0
    n_tok = len(lm.tok_encode(text))
    theirs_ppl = math.exp(-ll / n_tok)
    theirs_tps = n_tok / theirs_s

    print(f"quantkit perplexity loop: {ours_n} tokens, {ours_tps:8.1f} tok/s, ppl {ours_ppl:.4f}")
    print(f"lm-eval rolling loglik  : {n_tok} tokens, {theirs_tps:8.1f} tok/s, ppl {theirs_ppl:.4f}")
    print(f"throughput ratio quantkit / lm-eval: {ours_tps / theirs_tps:.2f}")
    print(f"perplexity difference: {abs(ours_ppl - theirs_ppl) / theirs_ppl:.2%}")


if __name__ == "__main__":
    main()
