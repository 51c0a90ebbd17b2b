"""The fixed requests of the smoke test.

Smoke requests are ordinary chat and completion prompts: every one must succeed with
non-empty text. The speed workload asks the model to copy, edit or quote text that is in the
prompt, where speculative decoding can help (n-gram lookup drafts tokens from the prompt);
the same workload runs with and without speculation, so the speedup is measured on it and
greedy outputs must be identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from quantkit.serving.client import Request

if TYPE_CHECKING:
    from quantkit.serving.results import ServeOptions

GREEDY_PROMPT = "The capital of France is"

# chat and completion alternate, so the first N (--serve-prompts) hold both kinds
SMOKE_PROMPTS = [
    ("chat", "What is the capital of France?"),
    ("completion", "Once upon a time,"),
    ("chat", "Write one sentence about the sea."),
    ("completion", "def fibonacci(n):"),
    ("chat", "Name three colours."),
    ("completion", "The three primary colours are"),
    ("chat", "Explain in one sentence what a compiler does."),
    ("completion", "Water boils at"),
]

_CODE = '''def moving_average(values, window):
    """Return the moving averages of values over a sliding window."""
    if window <= 0:
        raise ValueError("window must be positive")
    averages = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        if index >= window - 1:
            averages.append(total / window)
    return averages
'''

_PARAGRAPH = (
    "The library opens at nine in the morning and closes at six in the evening. Visitors may borrow up to "
    "five books at a time for three weeks. Late returns cost ten cents per day per book. The reading room "
    "on the second floor is quiet, and phones must be switched off there."
)

_LIST = "apples, bread, milk, eggs, butter, cheese, tomatoes, onions, rice, coffee"

SPEC_PROMPTS = [
    ("chat", f"Copy this Python function exactly, without changes:\n\n{_CODE}"),
    ("chat", f"Rewrite this function, renaming the variable `total` to `running_sum`. Output only the code.\n\n{_CODE}"),
    ("chat", f"Repeat the following paragraph word for word:\n\n{_PARAGRAPH}"),
    ("chat", f"Quote the sentences of this text that mention times or prices, exactly as written:\n\n{_PARAGRAPH}"),
    ("chat", f"Here is a shopping list: {_LIST}. Write it again as a numbered list, one item per line."),
    ("completion", f"{_CODE}\n\n# The same function again, unchanged:\n"),
    ("completion", f"Text: {_PARAGRAPH}\nThe same text, copied: "),
    ("completion", f"Items: {_LIST}.\nSame items: "),
]


def smoke_requests(max_tokens: int, limit: int | None = None) -> list[Request]:
    """The first `limit` smoke prompts (all 8 without one), never fewer than one chat and one completion."""
    prompts = SMOKE_PROMPTS[:max(2, limit)] if limit else SMOKE_PROMPTS
    return [Request(f"smoke-{i}", kind, prompt, max_tokens) for i, (kind, prompt) in enumerate(prompts)]


def spec_requests(max_tokens: int, limit: int | None = None) -> list[Request]:
    prompts = SPEC_PROMPTS[:limit] if limit else SPEC_PROMPTS
    return [Request(f"copy-{i}", kind, prompt, max_tokens) for i, (kind, prompt) in enumerate(prompts)]


@dataclass
class WorkloadPlan:
    """The requests of every phase: --serve-prompts and --serve-max-tokens bound them all (smoke and
    greedy included), and a scheme this machine serves very slowly gets quantkit.serving.support's
    short workload, the dropped concurrencies recorded as "not measured here"."""

    smoke: list[Request]
    greedy_tokens: int
    workload: list[Request]
    concurrency: tuple[int, ...]
    short_because: str | None = None  # why the workload is shorter than asked
    not_measured_here: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"smoke_requests": len(self.smoke), "smoke_max_tokens": self.smoke[0].max_tokens if self.smoke else None,
                "greedy_tokens": self.greedy_tokens, "workload_requests": len(self.workload),
                "max_tokens": self.workload[0].max_tokens if self.workload else None,
                "concurrency": list(self.concurrency), "short_because": self.short_because}


def plan_workload(options: ServeOptions, kind: str | None, device: str) -> WorkloadPlan:
    from quantkit.serving.support import SLOW_CPU_WORKLOAD, slow_reason

    prompts, max_tokens, concurrency = options.prompts, options.max_tokens, tuple(options.concurrency)
    slow = slow_reason(kind, device)
    dropped: dict[str, str] = {}
    if slow:
        prompts = min(prompts or SLOW_CPU_WORKLOAD.prompts, SLOW_CPU_WORKLOAD.prompts)
        max_tokens = min(max_tokens, SLOW_CPU_WORKLOAD.max_tokens)
        concurrency = (min(concurrency),)
        # the reason in full is short_because; this names it
        dropped = {f"concurrency {c}": f"not measured here: {kind} on CPU, short workload"
                   for c in options.concurrency if c not in concurrency}
    return WorkloadPlan(
        smoke=smoke_requests(min(options.smoke_max_tokens, max_tokens), prompts),
        greedy_tokens=min(options.greedy_tokens, max_tokens),
        workload=spec_requests(max_tokens, prompts),
        concurrency=concurrency,
        short_because=slow,
        not_measured_here=dropped,
    )
