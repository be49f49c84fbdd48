"""The consoles every command prints through.

Rich lays tables out for a window's width and cuts what does not fit ("25.3 K…"). Output that
goes to a pipe or a file has no window: there it takes the width it needs (COLUMNS, when set,
still rules), so `freshnets models > models.txt` keeps every value whole."""

import os

from rich.console import Console


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(stderr=stderr, width=1000)


console = _console()
err_console = _console(stderr=True)
