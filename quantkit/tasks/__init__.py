"""Offline lm-eval tasks shipped with quantkit.

`quantkit_docstring_mc`: given a function's docstring from the CPython standard library's
held-out code split (never used for calibration), pick the function's name among four
(three distractors drawn with a fixed seed from other held-out functions). Built
deterministically at run time from `calibration/code/holdout.jsonl`.
"""

from __future__ import annotations

import ast
import json
import random
import tempfile
from functools import lru_cache
from pathlib import Path

TASK_YAML = """task: quantkit_docstring_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Docstring: {{{{docstring}}}}\\nThe Python function described above is named"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def docstring_mc_items(seed: int = 0) -> list[dict]:
    from quantkit.sources.calibration import builtin_texts

    pairs = []
    for src in builtin_texts("code", "holdout"):
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in ast.walk(tree):  # functions and methods
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 30:
                    pairs.append((node.name, " ".join(doc.split())[:300]))
    pairs = sorted(dict(pairs).items())  # one item per name
    names = sorted({n for n, _ in pairs})
    rng = random.Random(seed)
    items = []
    for name, doc in pairs:
        distractors = rng.sample([n for n in names if n != name], 3)
        choices = distractors + [name]
        rng.shuffle(choices)
        items.append({"docstring": doc, "choices": [" " + c for c in choices], "answer": choices.index(name)})
    return items


@lru_cache(maxsize=1)
def task_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="quantkit-tasks-"))
    data = folder / "docstring_mc.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in docstring_mc_items()))
    (folder / "quantkit_docstring_mc.yaml").write_text(TASK_YAML.format(data=data))
    return folder


def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir()))


def tasks_digest() -> str:
    """sha256 of the shipped tasks' definitions and data: a changed task gives new cached base scores."""
    import hashlib

    h = hashlib.sha256()
    h.update(TASK_YAML.encode())
    h.update(json.dumps(docstring_mc_items()).encode())
    return h.hexdigest()
