"""TEMPORARY shim (api branch): the INTERFACES.md types and call the API layer is written against,
until engines/base.py (ChatMessage, ToolCall, ToolSpec), toolcalls/ (ConstraintPlan, check_schema,
events) and the new `Generation.start(messages, tools, params, stops, plan)` land.

Swap: re-point the imports of `inference_server.calls`, `openai/serving.py` and
`anthropic/serving.py` from this module to the real ones, replace `start(runtime, ...)` and
`count_tokens(runtime, ...)` by the Generation methods, and delete this file. Until then `start`
drives today's text-only Generation, so the API layer runs end to end (without real calls).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from inference_server.engines import base
from inference_server.engines.base import SamplingParams
from inference_server.generation import Outcome, Stream
from inference_server.runtime import Runtime


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""


@dataclass(frozen=True)
class ConstraintPlan:
    kind: Literal["json", "tools"]
    schema: dict[str, Any] | None = None
    tools: tuple[ToolSpec, ...] = ()
    mode: Literal["auto", "required", "named"] = "auto"
    name: str = ""
    parallel: bool = True
    family: object = None  # the engine's ToolFamily: Generation fills it in, serving knows no template


class SchemaError(ValueError):
    pass


def check_schema(schema: object) -> None:
    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON Schema is an object, not {type(schema).__name__}")
    if not isinstance(schema.get("type", "object"), str | list):
        raise SchemaError("'type' must be a string or a list of strings")


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
    fragment: str


@dataclass(frozen=True)
class CallEnd:
    index: int
    name: str
    arguments: dict[str, Any]


Event = TextDelta | CallStart | CallArgs | CallEnd


class EventSource:
    """Today's text Stream seen through the new `events()` interface."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream

    async def events(self) -> AsyncIterator[Event]:
        async for text in self._stream.texts():
            yield TextDelta(text)

    @property
    def outcome(self) -> Outcome | None:
        return self._stream.outcome

    @property
    def prompt_tokens(self) -> int:
        return self._stream.prompt_tokens

    @property
    def completion_tokens(self) -> int:
        return self._stream.completion_tokens

    async def aclose(self) -> None:
        await self._stream.aclose()


def _flat(messages: Sequence[ChatMessage]) -> list[base.ChatMessage]:
    out = []
    for m in messages:
        calls = "".join(f"\n[tool call {c.name}: {json.dumps(c.arguments)}]" for c in m.tool_calls)
        out.append(base.ChatMessage(m.role, (m.content + calls).strip("\n")))
    return out


async def start(
    runtime: Runtime,
    messages: Sequence[ChatMessage],
    tools: Sequence[ToolSpec],
    params: SamplingParams,
    stops: Sequence[str],
    plan: ConstraintPlan | None,
) -> EventSource:
    prompt = runtime.engine.render_chat(_flat(messages))
    return EventSource(await runtime.generation.start(prompt, params, stops))


async def count_tokens(runtime: Runtime, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> int:
    prompt = runtime.engine.render_chat(_flat(messages))
    return await asyncio.to_thread(runtime.generation.count_tokens, prompt)
