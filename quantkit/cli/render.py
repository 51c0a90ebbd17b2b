"""One output object per command: the same records rendered as a table (or lines) in a terminal and
as JSON under `--json`, in one place, so a command writes no `if as_json:` branch (docs/cli.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, Literal, Sequence, TypeVar, Union

from rich.console import Console
from rich.text import Text

from quantkit.cli.output import Table, console, literal, print_table, say

Cell = Union[str, Text]
R = TypeVar("R")


def plain_cell(value: Any) -> Cell:
    """A JSON value as a table cell: None as "-", a list joined with commas, anything else as str."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Column(Generic[R]):
    """One field of a record: `key` names it in the JSON, `header` in the table, and the cell is
    `format(value)` (or `cell(record)` where a cell needs more than the one value). A column with no
    key is in the table only; one with no header is in the JSON only."""

    key: str | None
    header: str | None
    value: Callable[[R], Any]
    format: Callable[[Any], Cell] = plain_cell
    cell: Callable[[R], Cell] | None = None
    justify: Literal["left", "right"] = "left"
    no_wrap: bool = False
    omit_none: bool = False  # the JSON leaves the key out where the value is None

    def table_cell(self, record: R) -> Cell:
        return self.cell(record) if self.cell is not None else self.format(self.value(record))


@dataclass(frozen=True)
class Rows(Generic[R]):
    """Records and their columns: the JSON list (one object per record) and the table hold the same values."""

    columns: Sequence[Column[R]]
    records: Sequence[R]
    title: str | None = None
    caption: str | None = None
    title_justify: Literal["left", "center", "right"] = "center"

    def json(self) -> list[dict[str, Any]]:
        out = []
        for record in self.records:
            row = {}
            for c in self.columns:
                if c.key is None:
                    continue
                value = c.value(record)
                if value is not None or not c.omit_none:
                    row[c.key] = value
            out.append(row)
        return out

    def table(self) -> Table:
        table = Table(title=self.title, caption=self.caption, title_justify=self.title_justify)
        shown = [c for c in self.columns if c.header is not None]
        for c in shown:
            table.add_column(c.header, justify=c.justify, no_wrap=c.no_wrap)
        for record in self.records:
            table.add_row(*(c.table_cell(record) for c in shown))
        return table

    def emit(self, as_json: bool, target: Console | None = None) -> None:
        Output(self.json()).table(self).emit(as_json, target)


class Output:
    """What a command prints: `payload` under --json (a JSON value or a pydantic model), otherwise the
    tables and lines added, in order. Build it from the same typed records, then `emit(as_json)` once."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self._parts: list[Callable[[Console], None]] = []

    def table(self, table: Table | Rows | Callable[[], Table]) -> Output:
        """A table, or a function that builds one only for the human rendering (from a JSON document)."""
        def render(target: Console) -> None:
            built = table.table() if isinstance(table, Rows) else table if isinstance(table, Table) else table()
            print_table(built, target)

        self._parts.append(render)
        return self

    def line(self, *parts) -> Output:
        """One line as say() prints it: strs as written, Texts from styled()."""
        self._parts.append(lambda target: say(*parts, target=target))
        return self

    def lines(self, make: Callable[[], Iterable]) -> Output:
        """Lines computed only for the human rendering: work (and its failures) that --json does not need."""
        self._parts.append(lambda target: [say(line, target=target) for line in make()])
        return self

    def rule(self, title: str) -> Output:
        self._parts.append(lambda target: target.rule(literal(title)))
        return self

    def verbatim(self, text: str) -> Output:
        """A block of text as written (a model card): no markup, no highlighting."""
        self._parts.append(lambda target: target.print(text, markup=False, highlight=False))
        return self

    def json_text(self) -> str:
        payload = self.payload.model_dump(mode="json") if hasattr(self.payload, "model_dump") else self.payload
        return json.dumps(payload)

    def emit(self, as_json: bool, target: Console | None = None) -> None:
        target = target or console
        if as_json:
            # never highlighted: a terminal that is a pty (an agent, `script`) still gets plain JSON
            target.print_json(self.json_text(), highlight=False)
            return
        for part in self._parts:
            part(target)
