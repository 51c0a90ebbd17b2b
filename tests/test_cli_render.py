"""The CLI's one output object: the same records rendered as --json and as a table (quantkit.cli.output)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from quantkit.cli.output import human_bytes
from quantkit.cli.render import Column, Output, Rows

pytestmark = pytest.mark.unit

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Thing:
    name: str
    size: int
    note: str | None = None


COLUMNS = (
    Column("name", "name", lambda t: t.name),
    Column("bytes", "size", lambda t: t.size, format=human_bytes, justify="right"),
    Column("note", None, lambda t: t.note, omit_none=True),  # JSON only
    Column(None, "what", lambda t: t.note or "plain"),  # table only
)
THINGS = (Thing("[red]x[/red]", 3 * 1024**2, "odd"), Thing("[/bold]", 10), Thing("plain", 0))


def render(out: Output | Rows, as_json: bool, terminal: bool = False) -> str:
    buffer = io.StringIO()
    out.emit(as_json, Console(file=buffer, width=200, force_terminal=terminal, color_system="truecolor" if terminal else None))
    return buffer.getvalue()


def table_cells(rows: Rows) -> list[list[str]]:
    table = rows.table()
    columns = [[str(cell) for cell in c._cells] for c in table.columns]
    return [list(row) for row in zip(*columns)]


def test_json_and_table_hold_the_same_values():
    rows = Rows(COLUMNS, THINGS)
    parsed = json.loads(render(rows, as_json=True))
    assert parsed == rows.json() == [
        {"name": "[red]x[/red]", "bytes": 3 * 1024**2, "note": "odd"},
        {"name": "[/bold]", "bytes": 10},
        {"name": "plain", "bytes": 0},
    ]
    assert [str(c.header) for c in rows.table().columns] == ["name", "size", "what"]
    # each table cell is its column's formatter applied to the very value the JSON holds
    for record, row, cells in zip(THINGS, parsed, table_cells(rows)):
        assert cells == [row["name"], human_bytes(row["bytes"]), record.note or "plain"]
    text = render(rows, as_json=False)
    for cells in table_cells(rows):
        for cell in cells:
            assert cell in text


def test_user_markup_is_printed_literally_in_the_table():
    text = render(Rows(COLUMNS, THINGS, title="[bold]t[/bold]"), as_json=False, terminal=True)
    plain = ANSI.sub("", text)
    assert "[red]x[/red]" in plain and "[/bold]" in plain and "[bold]t[/bold]" in plain


def test_json_has_no_ansi_codes_even_on_a_terminal():
    rows = Rows(COLUMNS, THINGS)
    table = render(rows, as_json=False, terminal=True)
    assert ANSI.search(table), "the terminal console colours the table: the JSON check below means something"
    text = render(rows, as_json=True, terminal=True)
    assert not ANSI.search(text)
    assert json.loads(text) == rows.json()


def test_output_renders_payload_or_parts_never_both():
    built = []

    def table():
        built.append(True)
        return Rows(COLUMNS, THINGS[:1]).table()

    out = (Output({"nested": {"rows": Rows(COLUMNS, THINGS[:1]).json()}, "total": 1})
           .line("first [green]line[/]").table(table).lines(lambda: ["later"]).rule("card").verbatim("[b]card[/b]"))
    as_json = render(out, as_json=True)
    first = {"name": "[red]x[/red]", "bytes": 3 * 1024**2, "note": "odd"}
    assert json.loads(as_json) == {"nested": {"rows": [first]}, "total": 1}
    assert not built, "a table only the human rendering needs is not built for --json"
    human = render(out, as_json=False)
    assert built
    assert "first [green]line[/]" in human and "[red]x[/red]" in human and "[b]card[/b]" in human
    assert human.index("first") < human.index("[red]x") < human.index("later") < human.index("card")
    assert "{" not in human


def test_a_pydantic_payload_is_dumped_as_json():
    pydantic = pytest.importorskip("pydantic")

    class Report(pydantic.BaseModel):
        path: Path
        passed: bool

    assert json.loads(render(Output(Report(path=Path("/a/b"), passed=True)), as_json=True)) == {"path": "/a/b", "passed": True}


def test_recipes_list_rows_keep_the_json_of_valid_and_invalid_recipes():
    from quantkit.cli.recipes import LISTED_COLUMNS, ListedRecipe

    rows = Rows(LISTED_COLUMNS, [ListedRecipe("a.yaml", True, model="m", outputs=["x", "y"]),
                                 ListedRecipe("[b].yaml", False, error="bad [red]field[/]")])
    assert json.loads(render(rows, as_json=True)) == [
        {"recipe": "a.yaml", "valid": True, "model": "m", "outputs": ["x", "y"]},
        {"recipe": "[b].yaml", "valid": False, "error": "bad [red]field[/]"},
    ]
    assert table_cells(rows) == [["a.yaml", "m", "x, y"], ["[b].yaml", "invalid", "bad [red]field[/]"]]


def test_cache_rows_keep_their_json_and_show_sizes(tmp_path):
    from quantkit.cache_store import CacheEntry
    from quantkit.cli.cache import ENTRY_COLUMNS, REMOVED_COLUMNS, StoredEntry

    entry = StoredEntry("references", CacheEntry(tmp_path / ("ab" * 32), {"base_fingerprint": "f" * 64, "n_tokens": 7},
                                                 2048, 1_700_000_000.0))
    assert Rows(ENTRY_COLUMNS, [entry]).json() == [{"store": "references", "path": str(entry.entry.path), "bytes": 2048,
                                                    "last_used": 1_700_000_000.0, "key": entry.entry.key}]
    assert Rows(REMOVED_COLUMNS, [entry]).json() == [{"store": "references", "path": str(entry.entry.path), "bytes": 2048}]
    cells = table_cells(Rows(ENTRY_COLUMNS, [entry]))[0]
    assert cells[:3] == ["references", "ab" * 6, human_bytes(2048)]
    assert cells[4] == f"base {'f' * 12}, tokens 7"
