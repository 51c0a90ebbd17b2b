"""Runtimes: evaluate each format with the engine that will serve it (one module each).

Every runtime produces `DomainScores` for a text: perplexity of the base and of the artifact,
and the token-by-token KL divergence between them, so checks do not care which runtime ran.
"""

from quantkit.runtimes.base import DomainScores

__all__ = ["DomainScores"]
