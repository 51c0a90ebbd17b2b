"""llama.cpp as the runtime for GGUF files: its own perplexity / KL-divergence tool.

The reference logits come from the F32 conversion of the float base, saved once per text
(`--kl-divergence-base`); each GGUF type is then scored against them. llama-perplexity
splits the text into non-overlapping chunks of `context` tokens and scores the second half
of each chunk, so stride == context here.
"""

from __future__ import annotations

from pathlib import Path

from quantkit.runtimes.base import DomainScores
from quantkit.toolchains.llamacpp import LlamaCpp


def base_logits(tc: LlamaCpp, base_gguf: Path, text_file: Path, logits_file: Path, context: int, chunks: int) -> int:
    """Save the reference logits; returns how many chunks the text actually filled."""
    result = tc.perplexity(base_gguf, text_file, ctx=context, chunks=chunks, save_logits=logits_file)
    return result["chunks"] or chunks


def score_gguf(tc: LlamaCpp, gguf_file: Path, logits_file: Path, domain: str, context: int, chunks: int) -> DomainScores:
    k = tc.kl_divergence(gguf_file, logits_file, ctx=context, chunks=chunks)
    return DomainScores(
        # llama-perplexity scores positions context/2 .. context-2 of each chunk (their next tokens)
        domain=domain, runtime="llama.cpp", n_tokens=chunks * (context - 1 - context // 2), context=context, stride=context,
        base_ppl=k["ppl_base"], ppl=k["ppl"], kld_mean=k["mean_kld"], kld_median=k["median_kld"],
        kld_p99=k["p99_kld"], top1_agreement=k["same_top_p"] / 100.0,
    )
