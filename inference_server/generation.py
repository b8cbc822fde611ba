"""What both APIs share: tokenising, admission, the engine stream, tool-call events, stop strings,
counts and metrics.

A prompt is tokenised once, off the event loop, and the engine gets the ids. Tool calls are parsed
out of the generated text by the model family's parser, so both APIs see the same events. Stop
strings are matched here rather than in the engine, on the text outside tool calls: text that could
be the start of a stop string is held back until it is known not to be one, and a match closes the
engine's iterator, which ends the generation and frees its slot at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from inference_server.admission import Admission, QueueFull
from inference_server.engines.base import (
    ChatMessage,
    Chunk,
    Engine,
    EngineError,
    InputRefused,
    PromptTooLong,
    SamplingParams,
    TemplateRefused,
    TokenConstraint,
    ToolSpec,
)
from inference_server.errors import ApiError, ContextLengthError
from inference_server.metrics import Metrics
from inference_server.toolcalls.parser import CallEnd, Event, TextDelta

FinishReason = Literal["stop", "length", "stop_sequence", "tool_calls"]

# No tokenizer packs more characters than this into one token: a prompt longer than the context times
# this is refused before it is tokenised (a 12 MB body would otherwise cost seconds of tokenising).
MAX_CHARS_PER_TOKEN = 32
# OpenAI's bound on the tokens of one embeddings request: the body limit alone would allow millions.
MAX_EMBEDDING_TOKENS = 300_000


class StopMatcher:
    """Finds the first stop string across chunk boundaries, holding back possible beginnings."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """The text safe to emit now, and the stop string if one just matched."""
        buffer = self.held + text
        hits = [(buffer.find(stop), stop) for stop in self.stops if stop in buffer]
        if hits:
            index, stop = min(hits)
            self.held = ""
            return buffer[:index], stop
        keep = self._partial_suffix(buffer)
        self.held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        """Held text, released when the generation ends without a match."""
        held, self.held = self.held, ""
        return held

    def _partial_suffix(self, buffer: str) -> int:
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest


@dataclass(frozen=True)
class ChatPrompt:
    messages: Sequence[ChatMessage]
    tools: Sequence[ToolSpec] = ()

    def texts(self) -> Iterator[str]:
        """Every piece of client text the prompt is made of."""
        for message in self.messages:
            yield message.content
            for call in message.tool_calls:
                yield json.dumps(call.arguments, ensure_ascii=False)
        for tool in self.tools:
            yield tool.description
            yield json.dumps(tool.parameters, ensure_ascii=False)


Prompt = ChatPrompt | str


class CallParser(Protocol):
    def feed(self, text: str) -> list[Event]: ...

    def close(self) -> list[Event]: ...


class _PlainText:
    """No tools: every piece of text is text."""

    def feed(self, text: str) -> list[Event]:
        return [TextDelta(text)] if text else []

    def close(self) -> list[Event]:
        return []


@dataclass(frozen=True)
class Outcome:
    finish_reason: FinishReason
    stop_sequence: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class Stream:
    """One admitted generation: iterate `events()` (or `texts()`), then read `outcome`; `aclose()`
    frees the slot. A failure after the first chunk raises EngineError."""

    def __init__(
        self,
        service: Generation,
        chunks: AsyncIterator[Chunk],
        first: Chunk,
        prompt_tokens: int,
        stops: Sequence[str],
        parser: CallParser,
        started: float,
    ) -> None:
        self._service = service
        self._chunks = chunks
        self._first: Chunk | None = first
        self._matcher = StopMatcher(stops)
        self._parser = parser
        self._started = started
        self._closed = False
        self._on_close: list[Callable[[], None]] = []
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.calls = 0
        self.outcome: Outcome | None = None

    async def events(self) -> AsyncIterator[Event]:
        try:
            async for chunk in self._all_chunks():
                self.completion_tokens = max(self.completion_tokens + 1, chunk.completion_tokens)
                parsed = self._parser.feed(chunk.text)
                if chunk.finish_reason is not None:
                    parsed += self._parser.close()
                for event in parsed:
                    if not isinstance(event, TextDelta):
                        self.calls += isinstance(event, CallEnd)
                        yield event
                        continue
                    text, stop = self._matcher.feed(event.text)
                    if text:
                        yield TextDelta(text)
                    if stop is not None:
                        self._finish("stop_sequence", stop, chunk)
                        return
                if chunk.finish_reason is not None:
                    if rest := self._matcher.flush():
                        yield TextDelta(rest)
                    self._finish_engine(chunk)
                    return
            raise EngineError("the engine ended a stream without a finish reason")
        finally:
            await self.aclose()

    async def texts(self) -> AsyncIterator[str]:
        """Only the text (no tools were declared, so there are no call events)."""
        async for event in self.events():
            if isinstance(event, TextDelta):
                yield event.text

    async def text(self) -> str:
        return "".join([piece async for piece in self.texts()])

    async def collect(self) -> list[Event]:
        return [event async for event in self.events()]

    async def _all_chunks(self) -> AsyncIterator[Chunk]:
        if self._first is not None:
            first, self._first = self._first, None
            self._service.metrics.ttft.observe(time.monotonic() - self._started)
            yield first
        async for chunk in self._chunks:
            yield chunk

    def _finish_engine(self, last: Chunk) -> None:
        if last.finish_reason == "length":
            self._finish("length", None, last)
        elif last.finish_reason == "stop":
            self._finish("tool_calls" if self.calls else "stop", None, last)
        else:
            detail = last.error or "the engine is shutting down or failed"
            raise EngineError(f"generation {last.finish_reason}: {detail}")

    def _finish(self, reason: FinishReason, stop: str | None, last: Chunk) -> None:
        self.prompt_tokens = last.prompt_tokens or self.prompt_tokens
        self.completion_tokens = last.completion_tokens or self.completion_tokens
        self.outcome = Outcome(reason, stop, self.prompt_tokens, self.completion_tokens, last.cached_tokens)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Called once the stream is closed and its slot given back."""
        self._on_close.append(callback)

    async def aclose(self) -> None:
        """Cancel the engine request if still running and give the slot back (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            await _aclose(self._chunks)
        finally:
            self._service.admission.release()
            for callback in self._on_close:
                callback()
            self._service.metrics.prompt_tokens.inc(self.prompt_tokens)
            self._service.metrics.completion_tokens.inc(self.completion_tokens)
            if self.outcome is not None:
                self._service.metrics.cached_tokens.inc(self.outcome.cached_tokens)


async def _aclose(chunks: AsyncIterator[Chunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def _check_unicode(text: str) -> None:
    """JSON may carry lone UTF-16 surrogates ("\\ud800"), which are no text a tokenizer can take."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode()
        raise ApiError(
            "invalid_request", f"the prompt holds {bad}, a lone UTF-16 surrogate: send valid Unicode text"
        ) from None


class Generation:
    """Turns a prompt into an admitted, primed Stream, or an ApiError before any output."""

    def __init__(self, engine: Engine, admission: Admission, metrics: Metrics) -> None:
        self.engine = engine
        self.admission = admission
        self.metrics = metrics

    async def tokens(self, prompt: Prompt, *, to_generate: bool = True) -> list[int]:
        """The prompt's ids, tokenised once and off the event loop. One that is `to_generate` and
        cannot fit the context by its length in characters is a 400 before it is tokenised."""
        self._check_engine()
        limit = self.engine.info.context_size - 1
        texts = list(prompt.texts()) if isinstance(prompt, ChatPrompt) else [prompt]
        for text in texts:
            _check_unicode(text)
        characters = sum(len(text) for text in texts)
        if to_generate and characters > (limit + 1) * MAX_CHARS_PER_TOKEN:
            raise ContextLengthError(characters // MAX_CHARS_PER_TOKEN, limit)
        try:
            if isinstance(prompt, ChatPrompt):
                return await asyncio.to_thread(self.engine.chat_tokens, prompt.messages, prompt.tools)
            return await asyncio.to_thread(self.engine.tokenize, prompt)
        except TemplateRefused as exc:
            raise ApiError("invalid_request", str(exc)) from None
        except EngineError as exc:
            raise ApiError("overloaded", f"engine failed: {exc}", retry_after_s=5) from None

    async def count_tokens(self, prompt: Prompt) -> int:
        """Counted however long (the body limit bounds it): a client counts to decide what to cut."""
        return len(await self.tokens(prompt, to_generate=False))

    async def start(
        self, prompt: Prompt, params: SamplingParams, stops: Sequence[str], plan: Any = None
    ) -> Stream:
        """Wait for a slot and the first chunk, so a full queue or a too-long prompt is an HTTP error.

        `plan` (a toolcalls.ConstraintPlan) constrains the answer and parses tool calls out of it.
        """
        started = time.monotonic()
        tokens = await self.tokens(prompt)
        limit = self.engine.info.context_size - 1
        if len(tokens) > limit:
            raise ContextLengthError(len(tokens), limit)
        room = self.engine.info.context_size - len(tokens)
        constraint, parser = await self._constraint(plan, min(params.max_tokens or room, room))
        try:
            await self.admission.acquire()
        except QueueFull as exc:
            raise ApiError("overloaded", f"{exc}; retry later", retry_after_s=1) from None
        chunks = None
        try:
            chunks = self.engine.generate(tokens, params, constraint)
            first = await anext(aiter(chunks))
            if first.finish_reason == "error":  # this request alone failed (its grammar, its sampler)
                raise ApiError("server", f"generation failed: {first.error or 'see the server log'}")
        except BaseException as exc:
            try:
                if chunks is not None:
                    await _aclose(chunks)
            finally:
                self.admission.release()
            if isinstance(exc, PromptTooLong):
                raise ContextLengthError(exc.prompt_tokens, exc.limit) from None
            if isinstance(exc, EngineError):
                raise ApiError("overloaded", f"engine failed: {exc}", retry_after_s=5) from None
            raise
        return Stream(self, chunks, first, len(tokens), stops, parser, started)

    async def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> tuple[list[list[float]], int]:
        """The inputs' pooled vectors (one batch on the engine) and their token count; texts are
        tokenised once, off the event loop, token arrays go as sent."""
        self._check_engine()
        if not inputs:
            raise ApiError("invalid_request", "input: send at least one text or token array")
        batch = await self._embedding_tokens(inputs)
        tokens = sum(len(ids) for ids in batch)
        if tokens > MAX_EMBEDDING_TOKENS:
            raise ApiError(
                "invalid_request",
                f"input: {tokens} tokens in one request, more than {MAX_EMBEDDING_TOKENS}: send fewer inputs",
            )
        try:
            vectors = await self.engine.embed(batch)
        except PromptTooLong as exc:
            i = next(i for i, ids in enumerate(batch) if len(ids) > exc.limit)
            raise ApiError(
                "context_length",
                f"input[{i}] is {len(batch[i])} tokens, more than the {exc.limit} this model embeds at "
                "once: shorten or split it",
            ) from None
        except InputRefused as exc:
            raise ApiError("invalid_request", f"input: {exc}") from None
        except EngineError as exc:
            raise ApiError("overloaded", f"engine failed: {exc}", retry_after_s=5) from None
        self.metrics.prompt_tokens.inc(tokens)
        return vectors, tokens

    async def _embedding_tokens(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Token arrays as sent, texts tokenised (all in one thread hop); empty inputs and a mix refused."""
        for i, item in enumerate(inputs):
            if not item:
                raise ApiError("invalid_request", f"input[{i}] is empty: an empty input has no embedding")
        texts = [item for item in inputs if isinstance(item, str)]
        if not texts:
            return [list(item) for item in inputs if not isinstance(item, str)]
        if len(texts) != len(inputs):
            raise ApiError("invalid_request", "input: send texts or token arrays, not both")
        limit = self.engine.info.context_size * MAX_CHARS_PER_TOKEN
        for i, text in enumerate(texts):
            _check_unicode(text)
            if len(text) > limit:
                raise ApiError(
                    "context_length", f"input[{i}] is {len(text)} characters, far more than this model embeds"
                )
        try:
            return await asyncio.to_thread(lambda: [self.engine.tokenize(text) for text in texts])
        except EngineError as exc:
            raise ApiError("overloaded", f"engine failed: {exc}", retry_after_s=5) from None

    async def _constraint(self, plan: Any, budget: int) -> tuple[TokenConstraint | None, CallParser]:
        """The plan compiled for this model's tool format; `budget` (the answer's most tokens) lets the
        grammar close what it has open before the budget ends."""
        if plan is None:
            return None, _PlainText()
        from inference_server import toolcalls

        try:
            family = toolcalls.family_for_template(self.engine.template_source)
            tokenizer = await asyncio.to_thread(self.engine.grammar_tokenizer)
        except EngineError as exc:
            raise ApiError("overloaded", f"engine failed: {exc}", retry_after_s=5) from None
        plan = replace(plan, family=family, max_tokens=budget)
        try:
            constraint = await asyncio.to_thread(toolcalls.compile_constraint, plan, tokenizer)
        except Exception as exc:  # check_schema passed, so the grammar library refused what it got
            raise ApiError("invalid_request", f"cannot constrain the answer to this schema: {exc}") from None
        parser = family.new_parser() if plan.kind == "tools" else _PlainText()
        return constraint, parser

    def _check_engine(self) -> None:
        if not self.engine.healthy():
            raise ApiError("overloaded", "the engine is not running: see the server log", retry_after_s=5)
