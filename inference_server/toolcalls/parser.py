"""Incremental parsing of generated text into text deltas and tool calls, for any family.

The parser runs on the event loop and is fed the text as it is generated. Outside calls it relays
text (holding back only what could still become the family's opener); inside a call it announces the
call once its name is complete and then relays the arguments' JSON as it arrives, so both APIs can
stream `arguments` / `partial_json` fragments instead of one blob at the end. Under a grammar the
text is always well formed; without one (or cut short by max_tokens) the parser degrades: a block
that never got a name goes back out as text, a call cut short ends with whatever of its arguments
parses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum, auto
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference_server.toolcalls.families import ToolFamily


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    name: str


@dataclass(frozen=True)
class CallArgs:
    index: int
    fragment: str  # a call's fragments concatenate to the JSON text of its arguments


@dataclass(frozen=True)
class CallEnd:
    index: int
    name: str
    arguments: dict[str, Any]


Event = TextDelta | CallStart | CallArgs | CallEnd

_WS = " \t\r\n"


class _S(Enum):
    TEXT = auto()  # free text, watching for the trigger
    START = auto()  # start-only family: nothing but whitespace seen yet
    PLAIN = auto()  # start-only family: the answer is text, for good
    LIST_OPEN = auto()  # array family: expecting "["
    OBJ_OPEN = auto()  # expecting the call object's "{"
    KEY = auto()  # expecting a key or "}"
    KEY_STR = auto()  # inside a key string
    COLON = auto()
    VALUE = auto()  # inside a value
    AFTER_VALUE = auto()  # expecting "," or "}"
    LIST_NEXT = auto()  # array family: expecting "," or "]"
    CLOSER = auto()  # matching the closer literally


class _Value:
    """Finds where one JSON value ends, one character at a time (leading whitespace skipped)."""

    def __init__(self) -> None:
        self.started = False
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.scalar = False

    def feed(self, c: str) -> str:
        """'skip' (leading whitespace), 'more', 'done' (c ended the value) or 'after' (the value ended
        before c, which belongs to the enclosing object)."""
        if not self.started:
            if c in _WS:
                return "skip"
            self.started = True
            if c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth = 1
            else:
                self.scalar = True
            return "more"
        if self.in_string:
            if self.escape:
                self.escape = False
            elif c == "\\":
                self.escape = True
            elif c == '"':
                self.in_string = False
                if self.depth == 0:
                    return "done"
            return "more"
        if self.scalar:
            return "after" if c in _WS + ",}]" else "more"
        if c == '"':
            self.in_string = True
        elif c in "{[":
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
            if self.depth == 0:
                return "done"
        return "more"


class CallParser:
    """feed(text) -> events; close() -> the events that end of generation settles."""

    def __init__(self, family: ToolFamily) -> None:
        self.family = family
        self._events: list[Event] = []
        self._text = ""  # TEXT: held back, could be the start of the trigger
        self._gap = ""  # whitespace after a call, emitted only if more text follows
        self._raw = ""  # everything since the trigger, in case the block turns out not to be a call
        self._state = _S.START if not family.trigger else _S.TEXT
        self._index = -1
        self._calls = 0
        self._name: str | None = None
        self._started = False  # CallStart sent for the current call
        self._args = ""
        self._sent = 0  # how much of _args went out as CallArgs
        self._key = ""
        self._capture = ""  # the current value's text
        self._value: _Value | None = None
        self._literal = ""
        self._matched = 0

    # -- the interface -------------------------------------------------------------------------

    def feed(self, text: str) -> list[Event]:
        for c in text:
            self._char(c)
        if self._state in (_S.TEXT, _S.PLAIN):
            self._release_text(final=False)
        self._flush_args()
        return self._take()

    def close(self) -> list[Event]:
        if self._state in (_S.TEXT, _S.START, _S.PLAIN):
            self._release_text(final=True)
            if self._gap and not self._calls:
                self._emit(TextDelta(self._gap))
        elif self._state is _S.CLOSER:
            self._text_out(self.family.closer[: self._matched])
        elif self._started:
            self._end_call()
        else:
            self._text_out(self._raw)
        self._flush_args()
        return self._take()

    # -- characters ------------------------------------------------------------------------------

    def _char(self, c: str) -> None:
        s = self._state
        if s in (_S.TEXT, _S.START, _S.PLAIN):
            self._free_char(c)
            return
        self._raw += c
        if s is _S.VALUE:
            self._value_char(c)
        elif c in _WS and s is not _S.KEY_STR and s is not _S.CLOSER:
            return
        elif s is _S.LIST_OPEN:
            self._expect(c == "[", _S.OBJ_OPEN)
        elif s is _S.OBJ_OPEN:
            if self._expect(c == "{", _S.KEY):
                self._new_call()
        elif s is _S.KEY:
            if c == '"':
                self._key, self._state = "", _S.KEY_STR
            elif c == "}":
                self._object_done()
            else:
                self._broken()
        elif s is _S.KEY_STR:
            if c == '"' and not self._key.endswith("\\"):
                self._state = _S.COLON
            else:
                self._key += c
        elif s is _S.COLON:
            if self._expect(c == ":", _S.VALUE):
                self._value = _Value()
                self._capture = ""
        elif s is _S.AFTER_VALUE:
            if c == ",":
                self._state = _S.KEY
            elif c == "}":
                self._object_done()
            else:
                self._broken()
        elif s is _S.LIST_NEXT:
            if c == ",":
                self._state = _S.OBJ_OPEN
            elif c == "]":
                self._after_block()
            else:
                self._text_out(c)
                self._state = _S.TEXT
        elif s is _S.CLOSER:
            self._closer_char(c)

    def _free_char(self, c: str) -> None:
        fam = self.family
        if self._state is _S.PLAIN:
            self._text += c
            return
        self._text += c
        if self._state is _S.START:
            stripped = self._text.lstrip(_WS)
            if not stripped:
                return
            if stripped.startswith("{"):
                self._text = ""
                self._begin_block("")
                self._state = _S.OBJ_OPEN
                self._char("{")
            elif fam.start_tag and stripped.startswith(fam.start_tag):
                self._text = ""
                self._begin_block(fam.start_tag)
                self._state = _S.OBJ_OPEN
            elif not (fam.start_tag and fam.start_tag.startswith(stripped)):
                self._state = _S.PLAIN
            return
        if self._text.endswith(fam.trigger):
            self._text_out(self._text[: -len(fam.trigger)])
            self._text = ""
            self._begin_block(fam.trigger)
            # what of the opener follows the trigger ("\n" for Hermes) is whitespace to skip
            self._state = _S.LIST_OPEN if fam.array else _S.OBJ_OPEN

    def _value_char(self, c: str) -> None:
        assert self._value is not None
        step = self._value.feed(c)
        if step == "skip":
            return
        if step == "after":
            self._raw = self._raw[:-1]
            self._value_done()
            self._char(c)
            return
        self._capture += c
        if self._key == self.family.args_key:
            self._args += c
        if step == "done":
            self._value_done()

    def _value_done(self) -> None:
        self._state = _S.AFTER_VALUE
        if self._key == "name" and self._name is None:
            try:
                name = json.loads(self._capture)
            except ValueError:
                name = None
            if not isinstance(name, str):
                self._broken()
                return
            self._name = name
            self._emit(CallStart(self._index, name))
            self._started = True

    def _closer_char(self, c: str) -> None:
        closer = self.family.closer.lstrip(_WS)
        if c == closer[self._matched]:
            self._matched += 1
            if self._matched == len(closer):
                self._state = _S.TEXT
                self._matched = 0
        elif c in _WS and self._matched == 0:
            return
        else:
            self._text_out(closer[: self._matched] + c)
            self._state = _S.TEXT
            self._matched = 0

    # -- steps -----------------------------------------------------------------------------------

    def _expect(self, ok: bool, then: _S) -> bool:
        if ok:
            self._state = then
        else:
            self._broken()
        return ok

    def _begin_block(self, opened_by: str) -> None:
        self._raw = self._gap + opened_by  # the gap comes back if the block is no call
        self._gap = ""

    def _new_call(self) -> None:
        self._index = self._calls
        self._calls += 1
        self._name, self._started, self._args, self._sent = None, False, "", 0

    def _object_done(self) -> None:
        if not self._started:
            self._broken()
            return
        self._end_call()
        if self.family.array:
            self._state, self._raw = _S.LIST_NEXT, ""
        else:
            self._after_block()

    def _after_block(self) -> None:
        """A call block is complete: match the closer, then back to text."""
        self._raw = ""
        if self.family.closer.strip(_WS):
            self._state, self._matched = _S.CLOSER, 0
        else:
            self._state = _S.TEXT if self.family.trigger else _S.PLAIN

    def _end_call(self) -> None:
        assert self._name is not None
        self._flush_args()
        self._emit(CallEnd(self._index, self._name, _parse_arguments(self._args)))
        self._started = False

    def _broken(self) -> None:
        """The block is not a call after all (only possible without a grammar)."""
        if self._started:
            self._end_call()
            self._text = ""
        else:
            if self._index == self._calls - 1 and self._name is None:
                self._calls -= 1  # the object that broke never became a call
            self._text = self._raw
        self._raw = ""
        self._state = _S.TEXT if self.family.trigger else _S.PLAIN
        if self._state is _S.TEXT:
            self._release_text(final=False)

    # -- output ----------------------------------------------------------------------------------

    def _release_text(self, *, final: bool) -> None:
        """Send the free text, keeping back a tail that could still grow into the trigger."""
        text = self._text
        keep = 0
        if not final:
            if self._state is _S.START:
                return
            trigger = self.family.trigger
            for n in range(min(len(trigger) - 1, len(text)), 0, -1):
                if trigger.startswith(text[-n:]):
                    keep = n
                    break
        out, self._text = text[: len(text) - keep], text[len(text) - keep :]
        self._text_out(out)

    def _text_out(self, text: str) -> None:
        """Send text; trailing whitespace waits for more text, so the whitespace that surrounds a call
        is dropped the same way however the text was chunked."""
        body = text.rstrip(_WS)
        if not body:
            self._gap += text
            return
        out, self._gap = self._gap + body, text[len(body) :]
        self._emit(TextDelta(out))

    def _flush_args(self) -> None:
        if self._started and len(self._args) > self._sent:
            self._events.append(CallArgs(self._index, self._args[self._sent :]))
            self._sent = len(self._args)

    def _emit(self, event: Event) -> None:
        if not isinstance(event, CallArgs):
            self._flush_args()
        self._events.append(event)

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def _parse_arguments(text: str) -> dict[str, Any]:
    """The arguments of a finished call; a call cut short keeps what closing its brackets recovers."""
    for candidate in (text, _closed(text)):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        return value if isinstance(value, dict) else {}
    return {}


def _closed(text: str) -> str:
    """Truncated JSON with its open string and brackets closed (a dangling key or comma dropped)."""
    stack: list[str] = []
    in_string = escape = False
    for c in text:
        if in_string:
            if escape:
                escape = False
            elif c == "\\":
                escape = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            stack.append("}" if c == "{" else "]")
        elif c in "}]" and stack:
            stack.pop()
    if in_string:
        text += "\\" if escape else ""
        text += '"'
    text = text.rstrip(_WS + ",:")
    if text.endswith(":"):
        text = text[:-1]
    return text + "".join(reversed(stack))
