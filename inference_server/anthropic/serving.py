"""Anthropic Messages requests to engine calls, and engine output to messages and stream events.

A tool result marked `is_error` reaches the model as its text prefixed with "Error: " (chat templates
have no field for it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import Request

from inference_server.anthropic import protocol as p
from inference_server.calls import (
    Assembler,
    CallError,
    Closed,
    Events,
    Fragment,
    Ledger,
    Mode,
    Opened,
    Part,
    Text,
    called,
    complete,
    json_answer,
    parts,
    plan,
    tool_spec,
)
from inference_server.engines.base import ChatMessage, EngineError, SamplingParams, ToolCall, ToolSpec
from inference_server.errors import ApiError, body
from inference_server.generation import ChatPrompt, Outcome
from inference_server.runtime import Runtime
from inference_server.streaming import HOLE, EventStream, filler, sse, unless_disconnected
from inference_server.toolcalls import ConstraintPlan

log = logging.getLogger("inference_server")

BILLING_HEADER = "x-anthropic-billing-header:"
_STOP_REASONS: dict[str, p.StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "stop_sequence": "stop_sequence",
}


def flatten(content: str | list[p.Block] | None) -> str:
    """Text blocks joined; media and server-tool blocks as markers, thinking dropped."""
    if content is None or isinstance(content, str):
        return content or ""
    parts_ = []
    for block in content:
        if block.type == "text":
            parts_.append(block.text)
        elif block.type not in ("thinking", "redacted_thinking"):
            parts_.append(f"[{block.type}]")
    return "\n".join(parts_)


def system_prompt(system: str | list[p.Block] | None, *, strip_billing_header: bool) -> str:
    """The system text; Claude Code's per-request billing line would defeat prefix caching."""
    text = flatten(system)
    if strip_billing_header:
        text = "\n".join(line for line in text.splitlines() if not line.startswith(BILLING_HEADER))
    return text.strip("\n")


def _assistant(content: str | list[p.Block], ledger: Ledger) -> ChatMessage:
    blocks = [] if isinstance(content, str) else content
    calls = tuple(ToolCall(b.id, b.name, b.input) for b in blocks if b.type == "tool_use")
    for call in calls:
        ledger.record(call)
    text = content if isinstance(content, str) else flatten([b for b in blocks if b.type != "tool_use"])
    return ChatMessage("assistant", text, calls)


def _user(content: str | list[p.Block], ledger: Ledger, where: str) -> list[ChatMessage]:
    """Tool results become tool turns, in order; the blocks between them user turns."""
    if isinstance(content, str):
        return [ChatMessage("user", content)]
    turns: list[ChatMessage] = []
    pending_blocks: list[p.Block] = []
    for j, block in enumerate(content):
        if block.type != "tool_result":
            pending_blocks.append(block)
            continue
        if pending_blocks:
            turns.append(ChatMessage("user", flatten(pending_blocks)))
            pending_blocks = []
        name = ledger.answered(block.tool_use_id, f"{where}.content[{j}]")
        text = ("Error: " if block.is_error else "") + flatten(block.content)
        turns.append(ChatMessage("tool", text, tool_call_id=block.tool_use_id, name=name))
    if pending_blocks or not turns:
        turns.append(ChatMessage("user", flatten(pending_blocks)))
    return turns


def to_messages(request: p.CountTokensRequest, *, strip_billing_header: bool) -> list[ChatMessage]:
    """System blocks, then each turn; `role: system` inside `messages` stays a system turn."""
    messages = []
    if system := system_prompt(request.system, strip_billing_header=strip_billing_header):
        messages.append(ChatMessage("system", system))
    ledger = Ledger()
    for i, message in enumerate(request.messages):
        if message.role == "system":
            messages.append(ChatMessage("system", flatten(message.content)))
        elif message.role == "assistant":
            messages.append(_assistant(message.content, ledger))
        else:
            messages += _user(message.content, ledger, f"messages[{i}]")
    return messages


def declared_tools(tools: list[p.Tool] | None) -> list[ToolSpec]:
    specs = []
    for i, tool in enumerate(tools or []):
        if not tool.custom:
            log.info(
                "tool '%s' of type %s is not served here; the model cannot call it", tool.name, tool.type
            )
            continue
        specs.append(tool_spec(tool.name, tool.description, tool.input_schema, f"tools[{i}].input_schema"))
    return specs


def tool_choice(choice: p.ToolChoice | None) -> tuple[Mode, str, bool]:
    """Mode, tool name and whether several calls may come; Anthropic's default is `auto`. Several
    calls in one turn only when the client says `disable_parallel_tool_use: false`: small local
    models, let loose, repeat the same call until max_tokens (llama-server defaults the same way)."""
    if choice is None or isinstance(choice, p.AutoChoice):
        return "auto", "", choice is not None and choice.disable_parallel_tool_use is False
    if isinstance(choice, p.AnyChoice):
        return "required", "", choice.disable_parallel_tool_use is False
    if isinstance(choice, p.NamedChoice):
        return "named", choice.name, choice.disable_parallel_tool_use is False
    return "none", "", False


def answer_format(request: p.CountTokensRequest) -> ConstraintPlan | None:
    """`output_config.format`, or the older beta `output_format`."""
    if request.output_config is not None and request.output_config.format is not None:
        return json_answer(request.output_config.format.schema_, "output_config.format.schema")
    if request.output_format is not None:
        return json_answer(request.output_format.schema_, "output_format.schema")
    return None


def constraint(request: p.CountTokensRequest) -> tuple[tuple[ToolSpec, ...], ConstraintPlan | None]:
    """The tools the model is shown and what its answer is held to."""
    mode, name, parallel = tool_choice(request.tool_choice)
    return plan(declared_tools(request.tools), mode, name, parallel, answer_format(request), "tool_choice")


def usage(stream: Events, outcome: Outcome | None) -> p.Usage:
    cached = outcome.cached_tokens if outcome else 0
    return p.Usage(
        input_tokens=stream.prompt_tokens - cached,
        output_tokens=stream.completion_tokens,
        cache_read_input_tokens=cached,
    )


def stop_reason(outcome: Outcome, assembler: Assembler) -> p.StopReason:
    return "tool_use" if called(outcome, assembler) else _STOP_REASONS.get(outcome.finish_reason, "end_turn")


def content(answer: list[Text | Closed]) -> list[p.TextBlock | p.ToolUseBlock]:
    """Consecutive texts as one block, each call as a tool_use block, in the order they came."""
    blocks: list[p.TextBlock | p.ToolUseBlock] = []
    for part in answer:
        if isinstance(part, Closed):
            blocks.append(p.ToolUseBlock(id=part.call.id, name=part.call.name, input=part.call.arguments))
        elif blocks and isinstance(blocks[-1], p.TextBlock):
            blocks[-1].text += part.text
        else:
            blocks.append(p.TextBlock(text=part.text))
    return blocks or [p.TextBlock(text="")]


class Reply:
    """One answer in Anthropic's shape, whole or as stream events, from a started generation."""

    def __init__(self, ident: str, model: str, tools: Sequence[ToolSpec]) -> None:
        self.ident, self.model = ident, model
        self.assembler = Assembler(tools, "toolu_")

    async def message(self, stream: Events) -> p.MessageResponse:
        answer = complete(await parts(stream, self.assembler))
        outcome = stream.outcome
        assert outcome is not None, "a finished stream has an outcome"
        return p.MessageResponse(
            id=self.ident,
            model=self.model,
            content=content(answer),
            stop_reason=stop_reason(outcome, self.assembler),
            stop_sequence=outcome.stop_sequence,
            usage=usage(stream, outcome),
        )

    async def events(self, stream: Events) -> AsyncIterator[str]:
        """The sequence the SDK's `messages.stream()` and Claude Code reassemble: message_start, ping,
        then per block content_block_start, its deltas, content_block_stop (indices consecutive from 0,
        a text block opened only when text comes), message_delta with usage, message_stop."""
        start = p.MessageResponse(
            id=self.ident,
            model=self.model,
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage=usage(stream, None),
        )
        yield _event("message_start", {"message": start.model_dump()})
        yield _event("ping", {})
        blocks = _Blocks()
        try:
            async for event in stream.events():
                for part in self.assembler.feed(event):
                    for out in blocks.part(part):
                        yield out
        except (EngineError, CallError) as exc:
            yield _event("error", body("server", str(exc), anthropic=True))
            return
        for part in self.assembler.finish():
            for out in blocks.part(part):
                yield out
        for out in blocks.end():
            yield out
        outcome = stream.outcome
        assert outcome is not None, "a finished stream has an outcome"
        delta = {"stop_reason": stop_reason(outcome, self.assembler), "stop_sequence": outcome.stop_sequence}
        yield _event("message_delta", {"delta": delta, "usage": usage(stream, outcome).model_dump()})
        yield _event("message_stop", {})


class _Blocks:
    """Content block bookkeeping for a stream: which block is open, and its index."""

    def __init__(self) -> None:
        self.index = -1
        self.open = False
        self.text: Callable[[str], str] | None = None  # the open text block's delta template

    def part(self, part: Part) -> list[str]:
        if isinstance(part, Text):
            opening: list[str] = []
            if self.text is None:
                opening = [*self._close(), self._start({"type": "text", "text": ""})]
                self.text = filler(_delta(self.index, {"type": "text_delta", "text": HOLE}))
            return [*opening, self.text(part.text)]
        if isinstance(part, Opened):
            block: dict[str, object] = {"type": "tool_use", "id": part.id, "name": part.name, "input": {}}
            return [*self._close(), self._start(block)]
        if isinstance(part, Fragment):
            return [_delta(self.index, {"type": "input_json_delta", "partial_json": part.text})]
        return self._close()

    def end(self) -> list[str]:
        """Close the last block; an answer with no block at all gets one empty text block."""
        if self.index < 0:
            return [self._start({"type": "text", "text": ""}), *self._close()]
        return self._close()

    def _start(self, block: dict[str, object]) -> str:
        self.index += 1
        self.open = True
        return _event("content_block_start", {"index": self.index, "content_block": block})

    def _close(self) -> list[str]:
        if not self.open:
            return []
        self.open, self.text = False, None
        return [_event("content_block_stop", {"index": self.index})]


class AnthropicServing:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def conversation(self, request: p.CountTokensRequest) -> list[ChatMessage]:
        self.runtime.pool.route(request.model)
        return to_messages(request, strip_billing_header=self.runtime.settings.strip_billing_header)

    async def count_tokens(self, request: p.CountTokensRequest) -> p.CountTokensResponse:
        tools, _ = constraint(request)
        prompt = ChatPrompt(self.conversation(request), tools)
        count = await self.runtime.count_tokens(request.model, prompt)
        return p.CountTokensResponse(input_tokens=count)

    async def messages(self, request: Request, body_: p.MessagesRequest) -> p.MessageResponse | EventStream:
        messages = self.conversation(body_)
        tools, constraint_plan = constraint(body_)
        params = SamplingParams(
            max_tokens=body_.max_tokens,
            temperature=1.0 if body_.temperature is None else body_.temperature,
            top_p=1.0 if body_.top_p is None else body_.top_p,
        )
        start = self.runtime.start(
            body_.model,
            ChatPrompt(messages, tools),
            params,
            body_.stop_sequences,
            constraint_plan,
            body_.keep_alive,
        )
        stream = await unless_disconnected(request, start)
        reply = Reply(f"msg_{uuid.uuid4().hex}", body_.model, tools)
        if body_.stream:
            return EventStream(reply.events(stream), on_close=stream.aclose)
        try:
            return await unless_disconnected(request, reply.message(stream))
        except EngineError as exc:  # the answer had started: a server-side failure, in the envelope
            raise ApiError("server", f"generation failed: {exc}") from None
        finally:
            await stream.aclose()


def _delta(index: int, delta: dict[str, object]) -> str:
    return _event("content_block_delta", {"index": index, "delta": delta})


def _event(kind: str, data: dict[str, object]) -> str:
    return sse({"type": kind, **data} if kind != "error" else data, event=kind)
