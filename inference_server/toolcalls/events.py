"""What a generation yields once tool calls are parsed out of its text: API-neutral events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    name: str


@dataclass(frozen=True)
class CallArgs:
    """A fragment of a call's arguments; a call's fragments concatenate to its arguments' JSON."""

    index: int
    fragment: str


@dataclass(frozen=True)
class CallEnd:
    index: int
    name: str
    arguments: dict[str, Any]


Event = TextDelta | CallStart | CallArgs | CallEnd
