"""lm-eval tasks: accuracy of base and artifact and the recovery ratio (artifact / base).

Runs the lm-eval library (not a re-implementation) with its `hf` model on the base folder and
the compressed-tensors artifact. Tasks are lm-eval task names (their data must be available
offline or downloadable) or the tasks shipped with quantkit in `quantkit/tasks/`, which read
local files. GGUF targets are skipped: lm-eval drives GGUF through a server that returns prompt
log-probabilities; llama-server returns none and llama-cpp-python's are shifted by one token
(measured; docs/decisions.md).
"""

from __future__ import annotations

import os

from quantkit.checks.base import Check, CheckContext, CheckResult

# llm-compressor's own CI gates task recovery at 0.95
RECOVERY_MIN_DEFAULT = 0.95
# the base is the same for every artifact of a run (its fingerprint is checked): scored once per process
_BASE_RESULTS: dict[tuple, dict] = {}


class LMEvalCheck(Check):
    name = "lm_eval"

    def __init__(self, tasks: list[str] | None = None, task_limit: int | None = None) -> None:
        self.tasks, self.task_limit = list(tasks or []), task_limit

    def run(self, ctx: CheckContext) -> CheckResult:
        fmt = ctx.target.format
        if not self.tasks:
            return CheckResult(self.name, "skipped", reason="no tasks requested (--task)")
        if fmt != "compressed-tensors":
            return CheckResult(self.name, "skipped", reason=f"lm-eval on {fmt}: no server returns correct prompt "
                               "log-probabilities (llama-server has none; llama-cpp-python's are shifted; docs/decisions.md)")
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            return CheckResult(self.name, "skipped", reason="lm-eval is not installed (pip install lm-eval)")
        from quantkit.tasks import task_manager

        key = (str(ctx.base_path), tuple(self.tasks), self.task_limit)
        if key not in _BASE_RESULTS:
            _BASE_RESULTS[key] = run_tasks(ctx.base_path, self.tasks, self.task_limit, task_manager())
        base = _BASE_RESULTS[key]
        art = run_tasks(ctx.target.path, self.tasks, self.task_limit, task_manager())
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

    def default_gates(self, target, result) -> dict[str, float]:
        return {"recovery_min": RECOVERY_MIN_DEFAULT} if self.tasks and target.format == "compressed-tensors" else {}


def run_tasks(model_path, tasks: list[str], limit: int | None, manager) -> dict:
    from lm_eval import simple_evaluate

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    results = simple_evaluate(
        model="hf", model_args=f"pretrained={model_path},dtype=float32", tasks=list(tasks), task_manager=manager,
        batch_size=8, device="cpu", limit=limit, log_samples=False,
    )
    out = {}
    for task in tasks:
        r = results["results"][task]
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        out[task] = {"acc": float(r["acc,none"]), "acc_stderr": float(r.get("acc_stderr,none") or 0.0), "n": n}
    return out
