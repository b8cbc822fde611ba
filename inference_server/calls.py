"""Tool calls as both APIs see them, whatever their wire shape.

Serving turns the request's tools and choice into one `ConstraintPlan`, and the generation's events
into answer parts through one `Assembler`: it gives every call an id, checks its name against the
declared tools, re-serialises its arguments canonically, and holds back whitespace that would
otherwise become an empty text block before a call. A call that never finished (the answer hit
`max_tokens` inside it) is streamed as far as it went but left out of a non-streamed answer, so a
client never gets arguments that do not parse.

When tools may be called (`auto`) and a JSON answer format is also asked for, the tools plan wins
and the text answer is not constrained: one grammar per sequence (logged when it happens).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from inference_server.engines.base import EngineError, ToolCall, ToolSpec
from inference_server.errors import ApiError
from inference_server.generation import Outcome
from inference_server.toolcalls import (
    CallArgs,
    CallEnd,
    CallStart,
    ConstraintPlan,
    Event,
    SchemaError,
    TextDelta,
    check_schema,
)

log = logging.getLogger("inference_server")

Mode = Literal["none", "auto", "required", "named"]


def new_id(prefix: str) -> str:
    """`call_…` / `toolu_…` with 32 hex digits: unique without coordination."""
    return f"{prefix}{uuid.uuid4().hex}"


def canonical(arguments: dict[str, Any]) -> str:
    """One spelling of a call's arguments, whatever whitespace the model produced."""
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def parsed_arguments(text: str, where: str) -> dict[str, Any]:
    """A history call's arguments, which clients send as JSON text; empty means none."""
    if not text.strip():
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError("invalid_request", f"{where}: not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise ApiError("invalid_request", f"{where}: must be a JSON object")
    return parsed


def tool_spec(name: str, description: str, schema: object, where: str) -> ToolSpec:
    """A declared tool, its schema checked: a schema that is not a schema is the client's error."""
    try:
        check_schema(schema)
    except SchemaError as exc:
        raise ApiError("invalid_request", f"{where}: not a usable JSON Schema: {exc}") from None
    assert isinstance(schema, dict)
    return ToolSpec(name, description, schema)


def json_answer(schema: object | None, where: str) -> ConstraintPlan:
    """The plan for an answer that is JSON (any object when `schema` is None)."""
    if schema is not None:
        try:
            check_schema(schema)
        except SchemaError as exc:
            raise ApiError("invalid_request", f"{where}: not a usable JSON Schema: {exc}") from None
        assert isinstance(schema, dict)
    return ConstraintPlan(kind="json", schema=schema)


def plan(
    tools: Sequence[ToolSpec],
    mode: Mode,
    name: str,
    parallel: bool,
    answer: ConstraintPlan | None,
    where: str,
) -> tuple[tuple[ToolSpec, ...], ConstraintPlan | None]:
    """The tools the prompt shows and what constrains the answer, or a 400 naming `where`."""
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ApiError("invalid_request", f"tools: '{dup}' is declared twice; tool names must be unique")
    if mode in ("required", "named") and not tools:
        raise ApiError("invalid_request", f"{where}: asks for a tool call but no tools are declared")
    if mode == "named" and name not in names:
        declared = ", ".join(names)
        raise ApiError("invalid_request", f"{where}: '{name}' is not a declared tool (declared: {declared})")
    if mode == "none" or not tools:
        return (), answer
    if answer is not None and mode == "auto":
        log.info("tools and a JSON answer format in one request: the text answer is not constrained")
    return tuple(tools), ConstraintPlan(
        kind="tools", tools=tuple(tools), mode=mode, name=name if mode == "named" else "", parallel=parallel
    )


class Ledger:
    """The calls seen so far in a conversation's history, so each tool result names a real call."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}

    def record(self, call: ToolCall) -> None:
        self._names[call.id] = call.name

    def answered(self, call_id: str, where: str) -> str:
        """The name of the call `call_id` answers, or a 400 if no earlier call has that id."""
        if call_id not in self._names:
            raise ApiError(
                "invalid_request",
                f"{where}: answers call '{call_id}', but no earlier assistant message made a call with "
                "that id",
            )
        return self._names[call_id]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Opened:
    index: int  # calls in this answer, from 0
    id: str
    name: str


@dataclass(frozen=True)
class Fragment:
    index: int
    text: str


@dataclass(frozen=True)
class Closed:
    index: int
    call: ToolCall


Part = Text | Opened | Fragment | Closed


class CallError(Exception):
    """The model produced a call the API cannot pass on (only possible when the grammar was relaxed)."""


@dataclass
class _Open:
    index: int
    id: str
    name: str
    sent: bool = False


class Assembler:
    """Generation events in, answer parts out, in order."""

    def __init__(self, tools: Sequence[ToolSpec], id_prefix: str) -> None:
        self._names = [tool.name for tool in tools]
        self._prefix = id_prefix
        self._open: dict[int, _Open] = {}
        self._held = ""
        self.calls: list[ToolCall] = []
        self._started = 0

    def feed(self, event: Event) -> list[Part]:
        if isinstance(event, TextDelta):
            return self._text(event.text)
        if isinstance(event, CallStart):
            return self._start(event.index, event.name)
        if isinstance(event, CallArgs):
            current = self._open[event.index]
            current.sent = current.sent or bool(event.fragment)
            return [Fragment(current.index, event.fragment)] if event.fragment else []
        return self._end(event)

    def finish(self) -> list[Part]:
        """What is left when the generation ends: trailing whitespace, unless calls were made."""
        held, self._held = self._held, ""
        return [Text(held)] if held and not self._started else []

    def _text(self, text: str) -> list[Part]:
        kept = text.rstrip()
        if not kept:
            self._held += text
            return []
        out = self._held + kept
        self._held = text[len(kept) :]
        return [Text(out)]

    def _start(self, key: int, name: str) -> list[Part]:
        self._held = ""
        call = _Open(self._started, new_id(self._prefix), self._resolve(name))
        self._open[key] = call
        self._started += 1
        return [Opened(call.index, call.id, call.name)]

    def _end(self, event: CallEnd) -> list[Part]:
        parts = [] if event.index in self._open else self._start(event.index, event.name)
        current = self._open.pop(event.index)
        call = ToolCall(current.id, current.name, event.arguments)
        self.calls.append(call)
        if not current.sent:
            parts.append(Fragment(current.index, canonical(event.arguments)))
        return [*parts, Closed(current.index, call)]

    def _resolve(self, name: str) -> str:
        """The declared name, allowing for a model that got only its case wrong."""
        if name in self._names:
            return name
        folded = [n for n in self._names if n.casefold() == name.casefold()]
        if len(folded) == 1:
            return folded[0]
        raise CallError(f"the model called '{name}', which is not a declared tool")


class Events(Protocol):
    """What serving reads from a started generation."""

    @property
    def prompt_tokens(self) -> int: ...

    @property
    def completion_tokens(self) -> int: ...

    @property
    def outcome(self) -> Outcome | None: ...

    def events(self) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...


async def parts(stream: Events, assembler: Assembler) -> list[Part]:
    """A whole answer; a failure after the first token is a 500 in the API's envelope."""
    out: list[Part] = []
    try:
        async for event in stream.events():
            out += assembler.feed(event)
    except (EngineError, CallError) as exc:
        raise ApiError("server", f"generation failed: {exc}") from None
    return out + assembler.finish()


def complete(parts_: Iterable[Part]) -> list[Text | Closed]:
    """The parts of a non-streamed answer: texts and finished calls."""
    return [part for part in parts_ if isinstance(part, Text | Closed)]


def called(outcome: Outcome, assembler: Assembler) -> bool:
    """The answer ended because it made calls (not because it ran out of tokens in one)."""
    return bool(assembler.calls) and outcome.finish_reason in ("stop", "tool_calls")
