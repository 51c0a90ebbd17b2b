"""transformers as the runtime for float and compressed-tensors checkpoints.

compressed-tensors installs its quantize-dequantize forward on every quantized Linear when
transformers loads the checkpoint, so W8A8 and FP8 activations are quantized in the forward
pass on CPU as well (a test checks that turning it off changes the logits).
"""

from __future__ import annotations

from pathlib import Path

import torch

from quantkit.errors import QuantkitError
from quantkit.runtimes.base import DomainScores, EvaluationSettings, Runtime, ScoredTarget


class TransformersModel:
    """A checkpoint loaded with transformers (compressed-tensors installs its quantized forward)."""

    def __init__(self, path: str | Path, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path)
        self.model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))

    @property
    def activation_quantized_modules(self) -> int:
        return sum(
            1
            for m in self.model.modules()
            if getattr(getattr(m, "quantization_scheme", None), "input_activations", None) is not None
        )

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.inference_mode()
    def logprobs(self, input_ids: list[int]) -> torch.Tensor:
        """[len(input_ids), vocab] next-token log-probabilities (position i predicts token i + 1)."""
        logits = self.model(input_ids=torch.tensor([input_ids], dtype=torch.long)).logits[0].float()
        return torch.log_softmax(logits, dim=-1)


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored index) of each window: every token after the first is scored
    exactly once, each with at least `context - stride` (and at least one) tokens before it in its window."""
    out: list[tuple[int, int, int]] = []
    overlap = max(1, context - stride)
    scored_to = 1
    while scored_to < n_tokens:
        begin = max(0, scored_to - overlap) if out else 0
        end = min(begin + context, n_tokens)
        out.append((begin, end, scored_to))
        scored_to = end
    return out


def llamacpp_windows(n_tokens: int, context: int, chunks: int) -> list[tuple[int, int, int]]:
    """The windows llama.cpp's perplexity tool scores: non-overlapping chunks of `context` tokens,
    only the second half of each chunk scored. Used to cross-check the two runtimes."""
    full = min(chunks, n_tokens // context)
    return [(c * context, (c + 1) * context, c * context + context // 2 + 1) for c in range(full)]


def perplexity(rt: TransformersModel, token_ids: list[int], context: int = 512, stride: int = 512,
               spans: list[tuple[int, int, int]] | None = None) -> tuple[float, int]:
    """Single-model perplexity over the same windows as `score_lockstep`; returns (ppl, scored tokens)."""
    nll = []
    for begin, end, first in spans if spans is not None else windows(len(token_ids), context, stride):
        ids = token_ids[begin:end]
        lo, hi = first - 1 - begin, end - 1 - begin
        nll.append(-rt.logprobs(ids)[lo:hi].gather(1, torch.tensor(ids[lo + 1 : hi + 1])[:, None])[:, 0])
    nll_all = torch.cat(nll)
    return float(nll_all.mean().exp()), nll_all.numel()


POSITION_BINS = 8


def score_lockstep(base: TransformersModel, artifact: TransformersModel, token_ids: list[int], domain: str,
                   context: int = 512, stride: int = 512, spans: list[tuple[int, int, int]] | None = None) -> DomainScores:
    """Perplexity of both models and KL(base || artifact) over the full vocabulary, window by window.

    Only one window's logits of each model are alive at a time, so memory does not grow with
    the text; per-token KL values (one float each) are kept for the median and 99th percentile.
    Mean KL is also binned by position in the window (POSITION_BINS bins of the context).
    """
    if stride > context or stride < 1:
        raise ValueError(f"stride must be between 1 and the context length ({context}); got {stride}")
    nll_base, nll_art, kls, agree = [], [], [], 0
    bin_sum, bin_n = torch.zeros(POSITION_BINS, dtype=torch.float64), torch.zeros(POSITION_BINS, dtype=torch.float64)
    for begin, end, first in spans if spans is not None else windows(len(token_ids), context, stride):
        ids = token_ids[begin:end]
        lp_base, lp_art = base.logprobs(ids), artifact.logprobs(ids)
        # positions whose *next* token is scored: first-1 .. end-2 (relative: first-1-begin ..)
        lo, hi = first - 1 - begin, end - 1 - begin
        targets = torch.tensor(ids[lo + 1 : hi + 1])
        pb, pa = lp_base[lo:hi], lp_art[lo:hi]
        nll_base.append(-pb.gather(1, targets[:, None])[:, 0])
        nll_art.append(-pa.gather(1, targets[:, None])[:, 0])
        kl = (pb.exp() * (pb - pa)).sum(-1).clamp_min(0)
        kls.append(kl)
        agree += int((pb.argmax(-1) == pa.argmax(-1)).sum())
        bins = torch.arange(lo, hi) * POSITION_BINS // context
        bin_sum.index_add_(0, bins, kl.double())
        bin_n.index_add_(0, bins, torch.ones_like(kl, dtype=torch.float64))
    kl = torch.cat(kls)
    n = kl.numel()
    return DomainScores(
        domain=domain, runtime="transformers", n_tokens=n, context=context, stride=stride,
        base_ppl=float(torch.cat(nll_base).mean().exp()), ppl=float(torch.cat(nll_art).mean().exp()),
        kld_mean=float(kl.mean()), kld_median=float(kl.median()), kld_p99=float(torch.quantile(kl, 0.99)),
        top1_agreement=agree / n,
        kld_by_position=[float(s / c) if c else None for s, c in zip(bin_sum, bin_n)],
    )


def perplexity_llamacpp_style(rt: TransformersModel, token_ids: list[int], context: int, chunks: int) -> float:
    """Perplexity over llama.cpp's perplexity-tool windows (`llamacpp_windows`)."""
    return perplexity(rt, token_ids, context, context, spans=llamacpp_windows(len(token_ids), context, chunks))[0]


class TransformersRuntime(Runtime):
    """compressed-tensors (and float) checkpoints: base and artifact scored in lockstep, window by window."""

    name = "transformers"

    def evaluate(self, artifact, base_folder, texts, settings: EvaluationSettings, reporter) -> list[ScoredTarget]:
        [target] = artifact.targets()
        with reporter.task(f"loading {artifact.name} and its base (transformers)"):
            base, quant = TransformersModel(base_folder), TransformersModel(artifact.path)
        scores = []
        for domain, text in texts.items():
            ids = base.tokenize(text)[: settings.max_tokens]
            if quant.tokenize(text)[: len(ids)] != ids:
                raise QuantkitError(
                    f"{artifact.name} tokenizes the '{domain}' text differently from its base; KLD would be meaningless"
                )
            if len(ids) < 2:
                raise QuantkitError(f"the '{domain}' text has fewer than 2 tokens")
            with reporter.task(f"{artifact.name}: perplexity and KLD on {domain} ({len(ids)} tokens)", tokens=len(ids)):
                scores.append(score_lockstep(base, quant, ids, domain, context=settings.context, stride=settings.stride))
        return [ScoredTarget(target, self.name, scores)]
