"""Build the built-in calibration sets from the Python standard library's own text.

Every machine with CPython has this text, so the sets need no network. Two domains:

- prose: docstrings of stdlib modules, classes and functions (technical English prose),
  doctest lines removed;
- code: stdlib Python source, one function or class per record.

Each source *file* goes wholly to one split (and a text found in several files is kept once)
(`train` for calibration, `holdout` for evaluation), chosen by a hash of its path, so no text is in both. The output is
deterministic for a given Python version; the files are committed so every machine uses
the same bytes, and `SOURCES.json` records the interpreter that built them.

Run: python calibration/build.py   (rewrites calibration/{prose,code}/*.jsonl)
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import platform
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "turtledemo",
    "__pycache__",
    "ensurepip",
    "pydoc_data",
}
HOLDOUT_PERCENT = 20
LIMITS = {"train": 400_000, "holdout": 120_000}  # characters per domain and split
MIN_PROSE, MIN_CODE, MAX_CODE = 240, 300, 3000


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        files.append(p)
    return files


def split_of(rel: str) -> str:
    bucket = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 100
    return "holdout" if bucket < HOLDOUT_PERCENT else "train"


def prose_records(tree: ast.Module) -> list[str]:
    out = []
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if not doc:
                continue
            lines = [ln for ln in doc.splitlines() if not ln.lstrip().startswith((">>>", "..."))]
            text = inspect.cleandoc("\n".join(lines)).strip()
            if len(text) >= MIN_PROSE and sum(c.isalpha() for c in text) > 0.6 * len(text):
                out.append(text)
    return list(dict.fromkeys(out))


def code_records(tree: ast.Module, source: str) -> list[str]:
    out = []
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            seg = ast.get_source_segment(source, node) or ""
            if MIN_CODE <= len(seg) <= MAX_CODE:
                out.append(seg)
    return out


def build(out_dir: Path = HERE) -> dict:
    root = Path(sysconfig.get_paths()["stdlib"])
    records = {("prose", s): [] for s in LIMITS} | {("code", s): [] for s in LIMITS}
    seen: set[str] = set()
    for path in stdlib_files():
        rel = path.relative_to(root).as_posix()
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        split = split_of(rel)
        for domain, texts in (("prose", prose_records(tree)), ("code", code_records(tree, source))):
            for t in texts:
                # the same docstring can appear in several files (e.g. decimal/_pydecimal); keep the first
                if t not in seen:
                    seen.add(t)
                    records[(domain, split)].append({"text": t, "source": f"stdlib/{rel}"})
    info = {
        "generator": "calibration/build.py",
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "license": "Python Software Foundation License (text of the CPython standard library)",
        "files": {},
    }
    for (domain, split), recs in records.items():
        # interleave files so a character budget spans the whole library, not its first modules
        recs = sorted(recs, key=lambda r: hashlib.sha256(r["text"].encode()).hexdigest())
        kept, total = [], 0
        for r in recs:
            if total >= LIMITS[split]:
                break
            kept.append(r)
            total += len(r["text"])
        target = out_dir / domain / f"{split}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
        target.write_text(body, encoding="utf-8")
        info["files"][f"{domain}/{split}.jsonl"] = {
            "records": len(kept),
            "characters": total,
            "sha256": hashlib.sha256(body.encode()).hexdigest(),
        }
    (out_dir / "SOURCES.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


if __name__ == "__main__":
    print(json.dumps(build(), indent=2))
