"""No module under quantkit/ is over MAX_LINES lines unless its docstring says why it is one module, in a
sentence that starts with REASON ("One module because the models are one schema: ..."). A long module
is usually two ideas; the sentence is for the ones that are not (docs/architecture.md)."""

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.unit

MAX_LINES = 300
REASON = "One module because"
_REASON_SENTENCE = re.compile(rf"(?:^|[.!?:]\s+|\n\s*){re.escape(REASON)}\b")


def oversized(paths: list[Path], root: Path) -> list[str]:
    """'path (N lines)' for each module over MAX_LINES whose docstring gives no REASON sentence."""
    found = []
    for path in sorted(paths):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not _REASON_SENTENCE.search(doc):
            found.append(f"{path.relative_to(root)} ({lines} lines)")
    return found


def test_every_module_is_short_or_says_why_it_is_one():
    offenders = oversized(list((REPO / "quantkit").rglob("*.py")), REPO)
    assert not offenders, (f"over {MAX_LINES} lines with no '{REASON} ...' sentence in the module docstring "
                           "(split it at a seam, or say why it is one idea):\n" + "\n".join(offenders))


def test_the_check_finds_a_long_module_and_accepts_a_reason(tmp_path):
    body = "x = 1\n" * MAX_LINES
    (tmp_path / "short.py").write_text(body)  # exactly MAX_LINES: allowed
    (tmp_path / "long.py").write_text('"""A module."""\n' + body)
    (tmp_path / "said.py").write_text(f'"""A module.\n\n{REASON} its parts share one state."""\n' + body)
    (tmp_path / "mentioned.py").write_text(f'"""Not {REASON.lower()} of anything in particular."""\n' + body)
    assert oversized(list(tmp_path.glob("*.py")), tmp_path) == [f"long.py ({MAX_LINES + 1} lines)",
                                                               f"mentioned.py ({MAX_LINES + 1} lines)"]
