from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class DomainScores:
    """Base-vs-artifact statistics on one held-out text, as llama.cpp's perplexity tool reports them."""

    domain: str
    runtime: str
    n_tokens: int  # scored tokens
    context: int
    stride: int
    base_ppl: float
    ppl: float
    kld_mean: float
    kld_median: float
    kld_p99: float
    top1_agreement: float  # fraction of positions where both models' most likely token is the same
    # mean KLD per 1/8 of the context (position of the predicting token in its window); None where
    # the runtime does not expose per-token values (llama.cpp)
    kld_by_position: list[float | None] | None = None

    @property
    def ppl_increase(self) -> float:
        return self.ppl / self.base_ppl - 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl_increase": self.ppl_increase}
