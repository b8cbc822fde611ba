"""Tables and messages on the terminal, through rich (imported when first used)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


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


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    console().print(table)
