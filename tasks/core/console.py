"""Tables and messages on the terminal, through rich (imported when first used).

While a task runs with `--json` (see `tables_as_json`), each table is one line of JSON on stdout and
every message goes to stderr, so stdout holds nothing a script would have to skip.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TextIO

# columns that tell one row from another: never cut short, whatever the width
IDENTIFYING = frozenset({"path", "name", "host", "model", "file", "checkout", "branch", "commit", "item"})
_UNBOUNDED = 100_000  # the console width through a pipe: a table is drawn at its natural width

_tables_as_json = False


@contextlib.contextmanager
def tables_as_json(enabled: bool) -> Iterator[None]:
    """Print tables as JSON lines and messages on stderr inside this block (when `enabled`)."""
    global _tables_as_json
    previous, _tables_as_json = _tables_as_json, enabled
    try:
        yield
    finally:
        _tables_as_json = previous


def messages() -> TextIO:
    """Where text for people goes: stdout, or stderr while tables are printed as JSON."""
    return sys.stderr if _tables_as_json else sys.stdout


def child_stdout() -> int | None:
    """A child process's stdout: ours, or our stderr while tables are printed as JSON."""
    return 2 if _tables_as_json else None


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False, stderr=_tables_as_json)


def print_json(line: str) -> None:
    """One line for a program to read: always stdout, where --json sends no messages."""
    print(line, flush=True)


def say(text: str, markup: bool = True, end: str = "\n") -> None:
    """One message, never wrapped mid-item: long lines stay whole whatever the terminal width.

    `markup=False` prints the text exactly (no [style] tags, no :emoji: codes): for logs, model output
    and anything a program reads."""
    console().print(text, markup=markup, emoji=markup, soft_wrap=True, end=end)


def confirm(question: str, assume_yes: bool = False) -> bool:
    """True on `assume_yes` (a --yes flag) or a yes typed at the terminal, False on anything else; with
    no terminal to ask (a pipe, /dev/null, a job), refuse at once rather than wait for an answer."""
    import sys

    from tasks.core.errors import HomelabError

    if assume_yes:
        return True
    if not sys.stdin.isatty():
        raise HomelabError(f"not confirmed: {question} (no terminal to ask)", "re-run with --yes to go ahead")
    try:
        answer = input(f"{question}? [y/N] ")
    except EOFError:  # Ctrl-D: no
        return False
    return answer.strip().lower() in {"y", "yes"}


def styled(text: str, style: str) -> str:
    """`text` in a rich `style` at a terminal; through a pipe, where rich would print it bare, bare."""
    return f"[{style}]{text}[/]" if sys.stdout.isatty() else text


def _plain_table(title: str, columns: list[str], rows: list[list[str]]) -> str | None:
    """The table exactly as rich draws it through a pipe (natural width, no styles), without importing
    rich; None when rich would read a cell differently (markup, tabs, wide or control characters)."""
    texts = [*columns, *(cell for row in rows for cell in row)]
    if not rows or any(not _one_cell_per_char(text) for text in texts):
        return None
    lines = [[cell.split("\n") for cell in row] for row in rows]
    widths = [
        max(len(line) for cell in column for line in cell)
        for column in zip([[c] for c in columns], *lines, strict=True)
    ]

    def rule(left: str, line: str, middle: str, right: str) -> str:
        return left + middle.join(line * (w + 2) for w in widths) + right

    def row_lines(cells: list[list[str]], edge: str) -> list[str]:
        height = max(len(cell) for cell in cells)
        padded = [[*cell, *[""] * (height - len(cell))] for cell in cells]
        parts = zip(*padded, strict=True)
        return [
            edge + edge.join(f" {t.ljust(w)} " for t, w in zip(p, widths, strict=True)) + edge for p in parts
        ]

    out = [title.ljust(sum(widths) + 3 * len(widths) + 1), rule("┏", "━", "┳", "┓")]
    out += row_lines([[c] for c in columns], "┃")
    out.append(rule("┡", "━", "╇", "┩"))
    for cells in lines:
        out += row_lines(cells, "│")
    out.append(rule("└", "─", "┴", "┘"))
    return "\n".join(out)


def _one_cell_per_char(text: str) -> bool:
    import unicodedata

    if "[" in text or any(ch < " " and ch != "\n" for ch in text):
        return False
    return text.isascii() or all(
        unicodedata.east_asian_width(ch) not in "WF" and not unicodedata.combining(ch) for ch in text
    )


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table on stdout (or one JSON object, `{"table": title, "rows": [{column: cell}]}`).

    At a terminal, identifying columns fold instead of ending in "…"; through a pipe nothing wraps,
    so each row is one line that grep and cut can read.
    """
    rows = [list(row) for row in rows]
    if _tables_as_json:
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        print(json.dumps({"table": title, "rows": records}, default=str), flush=True)
        return
    cells = [["" if cell is None else str(cell) for cell in row] for row in rows]
    drawn = None if sys.stdout.isatty() else _plain_table(title, [*columns], cells)
    if drawn is not None:
        print(drawn, flush=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold" if column in IDENTIFYING else "ellipsis")
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    width = None if sys.stdout.isatty() else _UNBOUNDED
    Console(highlight=False, width=width).print(table)
