"""The runtime interface: one format's evaluation, from an artifact to scored targets."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from quantkit.artifact import Artifact, Target
    from quantkit.progress import Reporter
    from quantkit.sources.heldout import DomainText


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
    # which tokens were scored (rule and windows); None for llama.cpp, whose rule is fixed (docs/validation.md)
    scored_tokens: dict | None = None

    @property
    def ppl_increase(self) -> float:
        return self.ppl / self.base_ppl - 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl_increase": self.ppl_increase}


@dataclass(frozen=True)
class EvaluationSettings:
    context: int = 512  # tokens per window
    stride: int = 256  # window step (transformers); every scored token has context - stride tokens before it
    max_tokens: int = 4096  # scored tokens per domain
    device: str = "cpu"  # resolved: cpu or cuda:N (quantkit.device.resolve_device)
    dtype: str = "float32"  # resolved: float32, bfloat16 or float16


@dataclass(frozen=True)
class BaseFolder:
    """The float base an artifact is scored against, as found on this machine."""

    path: Path
    # sha256 of this folder (fingerprint_folder): the artifact's recorded one unless a different base was
    # allowed (--allow-base-mismatch); every result cached per base is keyed by it
    fingerprint: str


@dataclass
class ScoredTarget:
    """One deployable target and its scores per domain; `unavailable` says why the runtime could not run it."""

    target: "Target"
    runtime: str
    scores: list[DomainScores] = field(default_factory=list)
    unavailable: str | None = None
    device: str | None = None  # where the runtime ran it (llama.cpp: always the CPU)


class Runtime(ABC):
    """Evaluates every target of one artifact format against the float base. Register it in
    `quantkit.runtimes.RUNTIMES` under the (format, runtime) pair it evaluates."""

    name: str
    # scores in child processes (llama.cpp's tools): validation then reads their peak memory from the
    # kernel, and samples its own process only every 0.5 s beside them (quantkit.memory)
    work_in_subprocesses: bool = False

    @abstractmethod
    def evaluate(self, artifact: "Artifact", base: BaseFolder, texts: "dict[str, DomainText]", settings: EvaluationSettings,
                 reporter: "Reporter") -> list[ScoredTarget]:
        """Score every target on each domain; read only as much of each text as `settings.max_tokens`
        needs (`DomainText.prefix`), never the whole of it."""
