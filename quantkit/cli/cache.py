"""`quantkit cache`: the results validate computes once per base (references, task scores), listed and pruned."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from quantkit.cli.options import JsonOpt
from quantkit.cli.output import Table, console, human_bytes, print_table, say

app = typer.Typer(help="List and prune quantkit's cached base references, llama.cpp reference logits and lm-eval base scores.",
                  no_args_is_help=True)


# the key fields a row shows: the text's fingerprint tells apart two domains scored against the same base
SHOWN_KEYS = {"base_fingerprint": "base", "tokens_sha256": "text", "text_sha256": "text", "n_tokens": "tokens",
              "context": "context", "stride": "stride", "chunks": "chunks", "dtype": "dtype", "tasks": "tasks"}


@app.command("list")
def list_command(as_json: JsonOpt = False) -> None:
    """Every cached entry, most recently used first, with its size and what it was computed from."""
    from datetime import datetime

    from quantkit.cache_store import all_stores

    rows = [(store, e) for store in all_stores() for e in store.entries()]
    if as_json:
        console.print_json(json.dumps([{"store": s.name, "path": str(e.path), "bytes": e.bytes, "last_used": e.last_used,
                                        "key": e.key} for s, e in rows]))
        return
    table = Table(title="quantkit cache", title_justify="left")
    for col, just in (("store", "left"), ("entry", "left"), ("size", "right"), ("last used", "left"), ("computed from", "left")):
        table.add_column(col, justify=just)
    for store, e in rows:
        what = ", ".join(f"{label} {str(e.key[k])[:12]}" for k, label in SHOWN_KEYS.items() if k in e.key)
        table.add_row(store.name, e.path.name[:12], human_bytes(e.bytes),
                      datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M"), what)
    print_table(table)
    say(f"{len(rows)} entries, {human_bytes(sum(e.bytes for _, e in rows))}")


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
    removed = [(store.name, e) for store in all_stores() for e in store.prune(bound)]
    if as_json:
        console.print_json(json.dumps({"removed": [{"store": s, "path": str(e.path), "bytes": e.bytes} for s, e in removed],
                                       "bytes": sum(e.bytes for _, e in removed)}))
        return
    say(f"removed {len(removed)} entries, {human_bytes(sum(e.bytes for _, e in removed))}")


def register(app_: typer.Typer) -> None:
    app_.add_typer(app, name="cache")
