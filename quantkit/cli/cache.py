"""`quantkit cache`: the results validate computes once per base (references, task scores), listed and pruned."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from quantkit.cli.options import JsonOpt
from quantkit.cli.output import human_bytes
from quantkit.cli.render import Column, Output, Rows

if TYPE_CHECKING:
    from quantkit.cache_store import CacheEntry

app = typer.Typer(help="List and prune quantkit's cached base references, llama.cpp reference logits and lm-eval base scores.",
                  no_args_is_help=True)


# the key fields a row shows: the text's fingerprint tells apart two domains scored against the same base
SHOWN_KEYS = {"base_fingerprint": "base", "tokens_sha256": "text", "text_sha256": "text", "n_tokens": "tokens",
              "context": "context", "stride": "stride", "chunks": "chunks", "dtype": "dtype", "tasks": "tasks"}


@dataclass(frozen=True)
class StoredEntry:
    store: str
    entry: CacheEntry


def computed_from(key: dict) -> str:
    return ", ".join(f"{label} {str(key[k])[:12]}" for k, label in SHOWN_KEYS.items() if k in key)


ENTRY_COLUMNS: tuple[Column[StoredEntry], ...] = (
    Column("store", "store", lambda r: r.store),
    Column("path", "entry", lambda r: str(r.entry.path), format=lambda path: Path(path).name[:12]),
    Column("bytes", "size", lambda r: r.entry.bytes, format=human_bytes, justify="right"),
    Column("last_used", "last used", lambda r: r.entry.last_used,
           format=lambda t: datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M")),
    Column("key", "computed from", lambda r: r.entry.key, format=computed_from),
)
REMOVED_COLUMNS = tuple(c for c in ENTRY_COLUMNS if c.key in ("store", "path", "bytes"))


@app.command("list")
def list_command(as_json: JsonOpt = False) -> None:
    """Every cached entry, most recently used first, with its size and what it was computed from."""
    from quantkit.cache_store import all_stores

    rows = Rows(ENTRY_COLUMNS, [StoredEntry(store.name, e) for store in all_stores() for e in store.entries()],
                title="quantkit cache", title_justify="left")
    total = sum(r.entry.bytes for r in rows.records)
    Output(rows.json()).table(rows).line(f"{len(rows.records)} entries, {human_bytes(total)}").emit(as_json)


@app.command("prune")
def prune_command(
    max_size: Annotated[Optional[float], typer.Option("--max-size", help="GiB each store may keep (least recently used go first). Default: $QUANTKIT_CACHE_MAX_GB or 20.", show_default=False)] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Remove every entry not in use.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove least recently used entries until each store fits its bound. Entries another process is reading stay."""
    from quantkit.cache_store import all_stores, max_bytes_setting
    from quantkit.errors import QuantkitError

    if max_size is not None and max_size < 0:
        raise QuantkitError(f"--max-size {max_size}: expected a number of GiB >= 0")
    bound = 0 if all_entries else int(max_size * 1024**3) if max_size is not None else max_bytes_setting()
    removed = Rows(REMOVED_COLUMNS, [StoredEntry(store.name, e) for store in all_stores() for e in store.prune(bound)])
    total = sum(r.entry.bytes for r in removed.records)
    Output({"removed": removed.json(), "bytes": total}).line(f"removed {len(removed.records)} entries, {human_bytes(total)}").emit(as_json)


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="cache")
