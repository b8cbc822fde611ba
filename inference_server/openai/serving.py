"""OpenAI requests to engine calls, engine output to OpenAI responses and stream chunks."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Literal

from fastapi import Request
from pydantic import BaseModel

from inference_server.engines.base import ChatMessage, SamplingParams
from inference_server.errors import ApiError, body
from inference_server.generation import ChatPrompt, Outcome, Stream
from inference_server.openai import protocol as p
from inference_server.runtime import Runtime
from inference_server.streaming import HOLE, EventStream, filler, sse, unless_disconnected

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
    converted = []
    for message in messages:
        text = flatten(message.content)
        for call in message.tool_calls or []:
            function = call.get("function", {})
            text += f"\n[tool call {function.get('name', '')}: {function.get('arguments', '')}]"
        converted.append(ChatMessage(_ROLES[message.role], text.strip("\n")))
    return converted


def sampling(request: p._Sampling, max_tokens: int | None) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens or 0,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        seed=request.seed,
    )


def stop_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else stop


def usage(outcome: Outcome) -> p.Usage:
    return p.Usage(
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
        prompt_tokens_details=p.PromptTokensDetails(cached_tokens=outcome.cached_tokens),
    )


def finish_reason(outcome: Outcome) -> Literal["stop", "length"]:
    return "length" if outcome.finish_reason == "length" else "stop"


class OpenAIServing:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def chat(self, request: Request, body_: p.ChatCompletionRequest) -> p.ChatCompletion | EventStream:
        self.runtime.check_model(body_.model)
        prompt = ChatPrompt(to_messages(body_.messages))
        params = sampling(body_, body_.max_completion_tokens or body_.max_tokens)
        start = self.runtime.generation.start(prompt, params, stop_list(body_.stop))
        stream = await unless_disconnected(request, start)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body_.stream:
            include_usage = bool(body_.stream_options and body_.stream_options.include_usage)

            def chunk(delta: p.Delta, reason: Literal["stop", "length"] | None = None) -> str:
                choice = p.ChunkChoice(delta=delta, finish_reason=reason)
                return _event(
                    p.ChatCompletionChunk(id=ident, created=created, model=body_.model, choices=[choice])
                )

            def last(outcome: Outcome) -> list[str]:
                events = [chunk(p.Delta(), finish_reason(outcome))]
                if include_usage:
                    final = p.ChatCompletionChunk(
                        id=ident, created=created, model=body_.model, choices=[], usage=usage(outcome)
                    )
                    events.append(_event(final))
                return events

            first = chunk(p.Delta(role="assistant", content=""))
            return _event_stream(stream, first, filler(chunk(p.Delta(content=HOLE))), last)
        text = await unless_disconnected(request, stream.text())
        outcome = _outcome(stream)
        choice = p.ChatChoice(message=p.AssistantMessage(content=text), finish_reason=finish_reason(outcome))
        return p.ChatCompletion(
            id=ident, created=created, model=body_.model, choices=[choice], usage=usage(outcome)
        )

    async def complete(self, request: Request, body_: p.CompletionRequest) -> p.Completion | EventStream:
        self.runtime.check_model(body_.model)
        prompts = [body_.prompt] if isinstance(body_.prompt, str) else body_.prompt
        if len(prompts) != 1:
            raise ApiError("invalid_request", "prompt: send one prompt per request")
        prompt = prompts[0]
        start = self.runtime.generation.start(
            prompt, sampling(body_, body_.max_tokens), stop_list(body_.stop)
        )
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
                events = [_event(completion("", finish_reason(outcome), None))]
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
        text = await unless_disconnected(request, stream.text())
        outcome = _outcome(stream)
        return completion(echoed + text, finish_reason(outcome), usage(outcome))


def _outcome(stream: Stream) -> Outcome:
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
        except ApiError as exc:
            yield sse(body(exc.kind, exc.message, anthropic=False))
            return
        for event in last(_outcome(stream)):
            yield event
        yield sse("[DONE]")

    return EventStream(events(), on_close=stream.aclose)
