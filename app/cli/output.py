"""The consoles every command prints through, and listings that fit the window.

Rich lays tables out for a window's width and cuts what does not fit ("25.3 K…"). Output that
goes to a pipe or a file has no window: there it takes the width it needs (COLUMNS, when set,
still rules), so `freshnets models > models.txt` keeps every value whole. In a window too
narrow for a listing, `print_listing` shortens ids (`freshnets predict` takes a model id's
unique start) and leaves out the least needed columns rather than squeezing every value, and
says so under the table."""

import os
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.table import Table


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(stderr=stderr, width=1000)


console = _console()
err_console = _console(stderr=True)

SHORT_ID = 12  # an id's characters a narrow listing shows, at least


@dataclass(frozen=True)
class Column:
    """A listing's column. In a narrow window the columns with the lowest `drop` go first
    (0: never); an `id` column is shortened to a unique start before any column goes."""

    header: str
    right: bool = False
    drop: int = 0
    id: bool = False


def print_listing(title: str, columns: list[Column], rows: list[Sequence[str]]) -> None:
    """`rows` (a string per column, rich markup allowed) as a table that fits the window."""
    cells = [dict(zip(columns, row, strict=True)) for row in rows]
    ids = [row[c] for c in columns if c.id for row in cells]
    unique = _unique_length(ids) if ids else None
    if unique is not None and unique >= max(map(len, ids)):
        unique = None  # shortening would cut nothing
    shown, short = list(columns), None
    unbounded = console.options.update_width(100_000)  # to measure a table's natural width
    while True:
        table = _listing(title, shown, cells, short)
        if console.measure(table, options=unbounded).maximum <= console.width:
            break
        if short is None and unique is not None:
            short = unique
        elif droppable := [c for c in shown if c.drop]:
            shown.remove(min(droppable, key=lambda c: c.drop))
        else:
            break  # nothing more to leave out: rich fits what is left
    notes = []
    if short is not None:
        notes.append(f"ids: their first {short} characters (whole in a wider window or a file)")
    if left_out := [c.header for c in columns if c not in shown]:
        notes.append(f"not shown at this width: {', '.join(left_out)}")
    if notes:
        table.caption = "; ".join(notes)
    console.print(table)


def _unique_length(ids: list[str]) -> int:
    """SHORT_ID, or more where two of these ids start alike (as git abbreviates hashes)."""
    n = SHORT_ID
    while len({i[:n] for i in ids}) < len(set(ids)):
        n += 1
    return n


def _listing(
    title: str, columns: list[Column], rows: list[dict[Column, str]], short: int | None
) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left")
    for column in columns:
        table.add_column(column.header, justify="right" if column.right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(row[c][: short if c.id else None] for c in columns))
    return table
