"""Anthropic Messages requests to engine calls, and engine output to messages and stream events."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

from fastapi import Request

from inference_server.anthropic import protocol as p
from inference_server.engines.base import ChatMessage, SamplingParams
from inference_server.errors import ApiError, body
from inference_server.generation import ChatPrompt, Outcome, Stream
from inference_server.runtime import Runtime
from inference_server.streaming import HOLE, EventStream, filler, sse, unless_disconnected

BILLING_HEADER = "x-anthropic-billing-header:"
_STOP_REASONS: dict[str, p.StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "stop_sequence": "stop_sequence",
}


def flatten(content: str | list[p.Block] | None) -> str:
    """Blocks as text: tool calls and results in brackets, media as markers, thinking dropped."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for block in content:
        if block.type == "text":
            parts.append(block.text)
        elif block.type == "tool_use":
            parts.append(f"[tool call {block.name}: {json.dumps(block.input, ensure_ascii=False)}]")
        elif block.type == "tool_result":
            parts.append(f"[tool result: {flatten(block.content)}]")
        elif block.type not in ("thinking", "redacted_thinking"):
            parts.append(f"[{block.type}]")
    return "\n".join(parts)


def system_prompt(system: str | list[p.Block] | None, *, strip_billing_header: bool) -> str:
    """The system text; Claude Code's per-request billing line would defeat prefix caching."""
    text = flatten(system)
    if strip_billing_header:
        text = "\n".join(line for line in text.splitlines() if not line.startswith(BILLING_HEADER))
    return text.strip("\n")


def to_messages(request: p.CountTokensRequest, *, strip_billing_header: bool) -> list[ChatMessage]:
    messages = []
    if system := system_prompt(request.system, strip_billing_header=strip_billing_header):
        messages.append(ChatMessage("system", system))
    messages += [ChatMessage(m.role, flatten(m.content)) for m in request.messages]
    return messages


def usage(stream: Stream, outcome: Outcome | None) -> p.Usage:
    cached = outcome.cached_tokens if outcome else 0
    return p.Usage(
        input_tokens=stream.prompt_tokens - cached,
        output_tokens=stream.completion_tokens,
        cache_read_input_tokens=cached,
    )


class AnthropicServing:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def prompt(self, request: p.CountTokensRequest) -> ChatPrompt:
        self.runtime.check_model(request.model)
        strip = self.runtime.settings.strip_billing_header
        return ChatPrompt(to_messages(request, strip_billing_header=strip))

    async def count_tokens(self, request: p.CountTokensRequest) -> p.CountTokensResponse:
        return p.CountTokensResponse(
            input_tokens=await self.runtime.generation.count_tokens(self.prompt(request))
        )

    async def messages(self, request: Request, body_: p.MessagesRequest) -> p.MessageResponse | EventStream:
        params = SamplingParams(
            max_tokens=body_.max_tokens,
            temperature=1.0 if body_.temperature is None else body_.temperature,
            top_p=1.0 if body_.top_p is None else body_.top_p,
        )
        start = self.runtime.generation.start(self.prompt(body_), params, body_.stop_sequences)
        stream = await unless_disconnected(request, start)
        ident = f"msg_{uuid.uuid4().hex}"
        if body_.stream:
            return EventStream(self._events(ident, body_.model, stream), on_close=stream.aclose)
        text = await unless_disconnected(request, stream.text())
        outcome = stream.outcome
        assert outcome is not None, "a finished stream has an outcome"
        return p.MessageResponse(
            id=ident,
            model=body_.model,
            content=[p.TextBlock(text=text)],
            stop_reason=_STOP_REASONS[outcome.finish_reason],
            stop_sequence=outcome.stop_sequence,
            usage=usage(stream, outcome),
        )

    async def _events(self, ident: str, model: str, stream: Stream) -> AsyncIterator[str]:
        """The exact sequence the SDK and Claude Code parse: message_start, content_block_start, ping,
        content_block_delta..., content_block_stop, message_delta (with usage), message_stop."""
        start = p.MessageResponse(
            id=ident, model=model, content=[], stop_reason=None, stop_sequence=None, usage=usage(stream, None)
        )
        yield _event("message_start", {"message": start.model_dump()})
        yield _event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        yield _event("ping", {})
        text_delta = filler(
            _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": HOLE}})
        )
        try:
            async for text in stream.texts():
                yield text_delta(text)
        except ApiError as exc:
            yield _event("error", body(exc.kind, exc.message, anthropic=True))
            return
        outcome = stream.outcome
        assert outcome is not None, "a finished stream has an outcome"
        yield _event("content_block_stop", {"index": 0})
        delta = {"stop_reason": _STOP_REASONS[outcome.finish_reason], "stop_sequence": outcome.stop_sequence}
        yield _event("message_delta", {"delta": delta, "usage": usage(stream, outcome).model_dump()})
        yield _event("message_stop", {})


def _event(kind: str, data: dict[str, object]) -> str:
    return sse({"type": kind, **data} if kind != "error" else data, event=kind)
