"""Tables and messages on the terminal, through rich (imported when first used)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def say(text: str, markup: bool = True) -> None:
    """One message, never wrapped mid-item: long lines stay whole whatever the terminal width."""
    console().print(text, markup=markup, soft_wrap=True)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    console().print(table)
