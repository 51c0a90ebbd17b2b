"""lm-eval tasks: accuracy of base and artifact and the recovery ratio (artifact / base).

Runs the lm-eval library (not a re-implementation) with its `hf` model on the base folder and
the compressed-tensors artifact. Tasks are lm-eval task names (their data must be available
offline or downloadable) or the tasks shipped with quantkit in `quantkit/tasks/`, which read
local files. GGUF targets are skipped: lm-eval drives GGUF through a server that returns prompt
log-probabilities; llama-server returns none and llama-cpp-python's are shifted by one token
(measured; docs/decisions.md).
"""

from __future__ import annotations

import json
import os

from quantkit.checks.base import Check, CheckContext, CheckResult
from quantkit.formats import format_named
from quantkit.report.model import CardResult, Column, Section, fixed

# llm-compressor's own CI gates task recovery at 0.95
RECOVERY_MIN_DEFAULT = 0.95
TASK_COLUMNS = (Column("task"), Column("base accuracy", True), Column("accuracy", True), Column("recovery", True))


class LMEvalCheck(Check):
    name = "lm_eval"

    def __init__(self, tasks: list[str] | None = None, task_limit: int | None = None, device: str = "cpu",
                 dtype: str = "float32") -> None:
        self.tasks, self.task_limit = list(tasks or []), task_limit
        self.device, self.dtype = device, dtype

    def run(self, ctx: CheckContext) -> CheckResult:
        fmt = ctx.target.format
        if not self.tasks:
            return CheckResult(self.name, "skipped", reason="no tasks requested (--task)")
        if (why := format_named(fmt).lm_eval_unsupported) is not None:
            return CheckResult(self.name, "skipped", reason=f"lm-eval on {fmt}: {why}")
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            return CheckResult(self.name, "skipped", reason="lm-eval is not installed (pip install lm-eval)")
        from quantkit.tasks import task_manager

        base = self.base_results(ctx)
        art = run_tasks(ctx.target.path, self.tasks, self.task_limit, task_manager(), self.device, self.dtype)
        per = {}
        for task in self.tasks:
            b, a = base[task], art[task]
            per[task] = {"base_acc": b["acc"], "acc": a["acc"], "recovery": a["acc"] / b["acc"] if b["acc"] else None,
                         "base_acc_stderr": b["acc_stderr"], "acc_stderr": a["acc_stderr"]}
        recoveries = [v["recovery"] for v in per.values() if v["recovery"] is not None]
        return CheckResult(
            self.name, "measured",
            metrics={"recovery": min(recoveries)} if recoveries else {},
            per_domain=per,
            sample={t: {"documents": base[t]["n"], "limit": self.task_limit} for t in self.tasks},
        )

    def base_results(self, ctx: CheckContext) -> dict:
        """The base's task scores, computed once per (base, tasks, limit, dtype, device class, lm-eval
        version, shipped task files) and kept in quantkit's cache."""
        from importlib import metadata

        from quantkit.cache_store import LM_EVAL_BASE, CacheStore
        from quantkit.device import device_class
        from quantkit.tasks import task_manager, tasks_digest

        key = {"kind": "lm-eval-base-scores", "format": 1, "base_fingerprint": ctx.base_fingerprint,
               "tasks": sorted(self.tasks), "limit": self.task_limit, "dtype": self.dtype,
               "device_class": device_class(self.device), "lm_eval": metadata.version("lm-eval"),
               "shipped_tasks_sha256": tasks_digest()}

        def build(folder):
            results = run_tasks(ctx.base_path, self.tasks, self.task_limit, task_manager(), self.device, self.dtype)
            (folder / "scores.json").write_text(json.dumps(results, indent=1) + "\n")

        with CacheStore(LM_EVAL_BASE).entry(key, build) as (entry, _):
            return json.loads((entry / "scores.json").read_text())

    def default_gates(self, target, result) -> dict[str, float]:
        scorable = format_named(target.format).lm_eval_unsupported is None
        return {"recovery_min": RECOVERY_MIN_DEFAULT} if self.tasks and scorable else {}

    @classmethod
    def task_rows(cls, report) -> tuple[tuple[str, ...], ...]:
        """(target, task, base accuracy, accuracy, recovery) of every task measured; none where no task ran."""
        return tuple((t.target, task, fixed(v["base_acc"]), fixed(v["acc"]), fixed(v.get("recovery")))
                     for t, c in cls.results(report) if c.status == "measured" for task, v in c.per_domain.items())

    @classmethod
    def run_section(cls, report) -> Section:
        return Section("lm-eval tasks", TASK_COLUMNS, cls.task_rows(report),
                       note="Accuracy of the base and of the target on each task, and recovery: target over base")

    @classmethod
    def card_section(cls, report) -> Section:
        return Section("Tasks (lm-eval)", TASK_COLUMNS, cls.task_rows(report))

    @classmethod
    def card_results(cls, target, result) -> list[CardResult]:
        if result.status != "measured":
            return []
        return [CardResult(task, task, "accuracy", round(v["acc"], 4), "accuracy") for task, v in result.per_domain.items()]


def run_tasks(model_path, tasks: list[str], limit: int | None, manager, device: str = "cpu", dtype: str = "float32") -> dict:
    from lm_eval import simple_evaluate

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    results = simple_evaluate(
        model="hf", model_args=f"pretrained={model_path},dtype={dtype}", tasks=list(tasks), task_manager=manager,
        batch_size=8, device=device, limit=limit, log_samples=False,
    )
    out = {}
    for task in tasks:
        r = results["results"][task]
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        out[task] = {"acc": float(r["acc,none"]), "acc_stderr": float(r.get("acc_stderr,none") or 0.0), "n": n}
    return out
