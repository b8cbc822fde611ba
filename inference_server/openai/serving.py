"""OpenAI requests to engine calls, engine output to OpenAI responses and stream chunks."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Literal, cast

from fastapi import Request
from pydantic import BaseModel

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
    canonical,
    complete,
    json_answer,
    parsed_arguments,
    parts,
    plan,
    tool_spec,
)
from inference_server.engines.base import ChatMessage, EngineError, SamplingParams, ToolCall, ToolSpec
from inference_server.errors import ApiError, body
from inference_server.generation import ChatPrompt, Outcome, Stream
from inference_server.openai import protocol as p
from inference_server.runtime import Runtime
from inference_server.streaming import HOLE, EventStream, filler, sse, unless_disconnected
from inference_server.toolcalls import ConstraintPlan
from inference_server.vectors import shortened

_ROLES: dict[str, Literal["system", "user", "assistant", "tool"]] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}


def flatten(content: str | list[p.ContentPart] | None) -> str:
    """Text parts joined; other parts (images, audio) become a short marker the model can read."""
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(part.text if part.type == "text" else f"[{part.type}]" for part in content)


def to_messages(messages: list[p.Message]) -> list[ChatMessage]:
    """The conversation as engine messages; every tool result must answer an earlier call."""
    converted = []
    ledger = Ledger()
    for i, message in enumerate(messages):
        role = _ROLES[message.role]
        calls = tuple(
            ToolCall(
                call.id,
                call.function.name,
                parsed_arguments(
                    call.function.arguments, f"messages[{i}].tool_calls[{j}].function.arguments"
                ),
            )
            for j, call in enumerate(message.tool_calls or [])
        )
        for call in calls:
            ledger.record(call)
        name, call_id = message.name or "", ""
        if message.role == "tool":
            if not message.tool_call_id:
                raise ApiError("invalid_request", f"messages[{i}]: a tool message needs tool_call_id")
            call_id = message.tool_call_id
            name = ledger.answered(call_id, f"messages[{i}]")
        converted.append(ChatMessage(role, flatten(message.content), calls, call_id, name))
    return converted


def tool_choice(choice: str | p.NamedToolChoice | None, tools: list[p.Tool] | None) -> tuple[Mode, str]:
    """OpenAI's default: `auto` with tools, `none` without."""
    if isinstance(choice, p.NamedToolChoice):
        return "named", choice.function.name
    if choice is None:
        return ("auto" if tools else "none"), ""
    return cast(Mode, choice), ""


def answer_format(response_format: p.ResponseFormat | None) -> ConstraintPlan | None:
    if isinstance(response_format, p.JsonObjectFormat):
        return json_answer(None, "response_format")
    if isinstance(response_format, p.JsonSchemaFormat):
        schema = response_format.json_schema.schema_
        return json_answer(schema or {}, "response_format.json_schema.schema")
    return None


def constraint(request: p.ChatCompletionRequest) -> tuple[tuple[ToolSpec, ...], ConstraintPlan | None]:
    """The tools the model is shown and what its answer is held to."""
    specs = [
        tool_spec(
            tool.function.name,
            tool.function.description,
            tool.function.parameters,
            f"tools[{i}].function.parameters",
        )
        for i, tool in enumerate(request.tools or [])
    ]
    mode, name = tool_choice(request.tool_choice, request.tools)
    return plan(
        specs,
        mode,
        name,
        request.parallel_tool_calls is True,
        answer_format(request.response_format),
        "tool_choice",
    )


def sampling(request: p._Sampling, max_tokens: int | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens or 0,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
    )


def usage(outcome: Outcome) -> p.Usage:
    return p.Usage(
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
        prompt_tokens_details=p.PromptTokensDetails(cached_tokens=outcome.cached_tokens),
    )


def text_finish(outcome: Outcome) -> Literal["stop", "length"]:
    return "length" if outcome.finish_reason == "length" else "stop"


def finish_reason(outcome: Outcome, assembler: Assembler) -> p.FinishReason:
    return "tool_calls" if called(outcome, assembler) else text_finish(outcome)


def message(answer: list[Text | Closed]) -> p.AssistantMessage:
    """`content` is null when the answer is only calls, as OpenAI's is."""
    text = "".join(part.text for part in answer if isinstance(part, Text))
    calls = [
        p.ToolCallOut(
            id=part.call.id,
            function=p.ToolCallFunction(name=part.call.name, arguments=canonical(part.call.arguments)),
        )
        for part in answer
        if isinstance(part, Closed)
    ]
    return p.AssistantMessage(content=None if calls and not text else text, tool_calls=calls or None)


def call_chunk(part: Opened | Fragment) -> p.Delta:
    if isinstance(part, Opened):
        first = p.ToolCallDelta(
            index=part.index,
            id=part.id,
            type="function",
            function=p.FunctionDelta(name=part.name, arguments=""),
        )
        return p.Delta(tool_calls=[first])
    return p.Delta(
        tool_calls=[p.ToolCallDelta(index=part.index, function=p.FunctionDelta(arguments=part.text))]
    )


class ChatReply:
    """One chat answer in OpenAI's shape, whole or as chunks, from a started generation."""

    def __init__(self, model: str, tools: Sequence[ToolSpec]) -> None:
        self.ident, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.assembler = Assembler(tools, "call_")

    async def completion(self, stream: Events) -> p.ChatCompletion:
        answer = complete(await parts(stream, self.assembler))
        outcome = _outcome(stream)
        choice = p.ChatChoice(message=message(answer), finish_reason=finish_reason(outcome, self.assembler))
        return p.ChatCompletion(
            id=self.ident, created=self.created, model=self.model, choices=[choice], usage=usage(outcome)
        )

    async def chunks(self, stream: Events, include_usage: bool) -> AsyncIterator[str]:
        yield self._chunk(p.Delta(role="assistant", content=""))
        text = filler(self._chunk(p.Delta(content=HOLE)))
        try:
            async for event in stream.events():
                for part in self.assembler.feed(event):
                    yield self._part(part, text)
        except (EngineError, CallError) as exc:
            yield sse(body("server", str(exc), anthropic=False))
            return
        for part in self.assembler.finish():
            yield self._part(part, text)
        outcome = _outcome(stream)
        yield self._chunk(p.Delta(), finish_reason(outcome, self.assembler))
        if include_usage:
            yield _event(self._envelope([], usage(outcome)))
        yield sse("[DONE]")

    def _part(self, part: Part, text: Callable[[str], str]) -> str:
        if isinstance(part, Text):
            return text(part.text)
        if isinstance(part, Opened | Fragment):
            # no nulls: the SDK's delta accumulator would overwrite a call's `type` with one
            return sse(self._envelope([p.ChunkChoice(delta=call_chunk(part))]).model_dump(exclude_none=True))
        return ""  # Closed: OpenAI marks the end of a call by the next one or the finish reason

    def _chunk(self, delta: p.Delta, reason: p.FinishReason | None = None) -> str:
        return _event(self._envelope([p.ChunkChoice(delta=delta, finish_reason=reason)]))

    def _envelope(self, choices: list[p.ChunkChoice], use: p.Usage | None = None) -> p.ChatCompletionChunk:
        return p.ChatCompletionChunk(
            id=self.ident, created=self.created, model=self.model, choices=choices, usage=use
        )


class OpenAIServing:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def chat(self, request: Request, body_: p.ChatCompletionRequest) -> p.ChatCompletion | EventStream:
        self.runtime.pool.route(body_.model)
        tools, constraint_plan = constraint(body_)
        messages = to_messages(body_.messages)
        params = sampling(body_, body_.max_completion_tokens or body_.max_tokens)
        start = self.runtime.start(
            body_.model,
            ChatPrompt(messages, tools),
            params,
            body_.stop or [],
            constraint_plan,
            body_.keep_alive,
        )
        stream = await unless_disconnected(request, start)
        reply = ChatReply(body_.model, tools)
        if body_.stream:
            include_usage = bool(body_.stream_options and body_.stream_options.include_usage)
            return EventStream(reply.chunks(stream, include_usage), on_close=stream.aclose)
        try:
            return await unless_disconnected(request, reply.completion(stream))
        except EngineError as exc:  # the answer had started: a server-side failure, in the envelope
            raise ApiError("server", f"generation failed: {exc}") from None
        finally:
            await stream.aclose()

    async def complete(self, request: Request, body_: p.CompletionRequest) -> p.Completion | EventStream:
        self.runtime.pool.route(body_.model)
        prompts = [body_.prompt] if isinstance(body_.prompt, str) else body_.prompt
        if len(prompts) != 1:
            raise ApiError("invalid_request", "prompt: send one prompt per request")
        prompt = prompts[0]
        params = sampling(body_, body_.max_tokens)
        start = self.runtime.start(body_.model, prompt, params, body_.stop or [], None, body_.keep_alive)
        stream = await unless_disconnected(request, start)
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        echoed = prompt if body_.echo else ""

        def completion(
            text: str, reason: Literal["stop", "length"] | None, use: p.Usage | None
        ) -> p.Completion:
            choice = p.CompletionChoice(text=text, finish_reason=reason)
            return p.Completion(id=ident, created=created, model=body_.model, choices=[choice], usage=use)

        if body_.stream:
            include_usage = bool(body_.stream_options and body_.stream_options.include_usage)

            def last(outcome: Outcome) -> list[str]:
                events = [_event(completion("", text_finish(outcome), None))]
                if include_usage:
                    events.append(
                        _event(
                            p.Completion(
                                id=ident, created=created, model=body_.model, choices=[], usage=usage(outcome)
                            )
                        )
                    )
                return events

            first = _event(completion(echoed, None, None))
            return _event_stream(stream, first, filler(_event(completion(HOLE, None, None))), last)
        try:
            text = await unless_disconnected(request, stream.text())
        except EngineError as exc:
            raise ApiError("server", f"generation failed: {exc}") from None
        outcome = _outcome(stream)
        return completion(echoed + text, text_finish(outcome), usage(outcome))

    async def embed(self, body_: p.EmbeddingRequest) -> p.EmbeddingList:
        embedded = await self.runtime.embed(body_.model, body_.input, body_.keep_alive)
        size = len(embedded.vectors[0])
        vectors = embedded.vectors
        if body_.dimensions is not None:
            if body_.dimensions > size:
                raise ApiError(
                    "invalid_request",
                    f"dimensions: {body_.model}'s embeddings have {size}; ask for at most that",
                )
            vectors = [shortened(vector, body_.dimensions) for vector in vectors]
        data = [
            p.Embedding(index=i, embedding=_base64(v) if body_.encoding_format == "base64" else v)
            for i, v in enumerate(vectors)
        ]
        use = p.EmbeddingUsage(prompt_tokens=embedded.prompt_tokens, total_tokens=embedded.prompt_tokens)
        return p.EmbeddingList(data=data, model=body_.model, usage=use)


def _base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: the float32 values, little-endian."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _outcome(stream: Events | Stream) -> Outcome:
    assert stream.outcome is not None, "a finished stream has an outcome"
    return stream.outcome


def _event(model: BaseModel) -> str:
    return sse(model.model_dump(mode="json", exclude_none=False))


def _event_stream(
    stream: Stream,
    first: str,
    piece: Callable[[str], str],
    last: Callable[[Outcome], list[str]],
) -> EventStream:
    async def events() -> AsyncIterator[str]:
        yield first
        try:
            async for text in stream.texts():
                yield piece(text)
        except EngineError as exc:
            yield sse(body("server", str(exc), anthropic=False))
            return
        for event in last(_outcome(stream)):
            yield event
        yield sse("[DONE]")

    return EventStream(events(), on_close=stream.aclose)
