"""What both APIs share: admission, the engine stream, stop strings, counts and metrics.

Stop strings are matched here rather than in the engine: text that could be the start of a stop
string is held back until it is known not to be one, and a match closes the engine's iterator, which
ends the generation and frees its slot at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from inference_server.admission import Admission, QueueFull
from inference_server.engines.base import Chunk, Engine, EngineError, PromptTooLong, SamplingParams
from inference_server.errors import ApiError, ContextLengthError
from inference_server.metrics import Metrics

FinishReason = Literal["stop", "length", "stop_sequence"]


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
class Outcome:
    finish_reason: FinishReason
    stop_sequence: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


class Stream:
    """One admitted generation: iterate `texts()`, then read `outcome`; `aclose()` frees the slot."""

    def __init__(
        self,
        service: Generation,
        chunks: AsyncIterator[Chunk],
        first: Chunk,
        prompt_tokens: int,
        stops: Sequence[str],
        started: float,
    ) -> None:
        self._service = service
        self._chunks = chunks
        self._first: Chunk | None = first
        self._matcher = StopMatcher(stops)
        self._started = started
        self._closed = False
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.outcome: Outcome | None = None

    async def texts(self) -> AsyncIterator[str]:
        try:
            async for chunk in self._all_chunks():
                self.completion_tokens = max(self.completion_tokens + 1, chunk.completion_tokens)
                text, stop = self._matcher.feed(chunk.text)
                if text:
                    yield text
                if stop is not None:
                    self._finish("stop_sequence", stop, chunk)
                    return
                if chunk.finish_reason is not None:
                    if rest := self._matcher.flush():
                        yield rest
                    self._finish_engine(chunk)
                    return
            raise EngineError("the engine ended a stream without a finish reason")
        finally:
            await self.aclose()

    async def text(self) -> str:
        return "".join([piece async for piece in self.texts()])

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
            self._finish("stop", None, last)
        else:
            raise EngineError(f"generation {last.finish_reason}: the engine is shutting down or failed")

    def _finish(self, reason: FinishReason, stop: str | None, last: Chunk) -> None:
        self.prompt_tokens = last.prompt_tokens or self.prompt_tokens
        self.completion_tokens = last.completion_tokens or self.completion_tokens
        self.outcome = Outcome(reason, stop, self.prompt_tokens, self.completion_tokens, last.cached_tokens)

    async def aclose(self) -> None:
        """Cancel the engine request if still running and give the slot back (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._service.admission.release()
            self._service.metrics.prompt_tokens.inc(self.prompt_tokens)
            self._service.metrics.completion_tokens.inc(self.completion_tokens)
            if self.outcome is not None:
                self._service.metrics.cached_tokens.inc(self.outcome.cached_tokens)


class Generation:
    """Turns a rendered prompt into an admitted, primed Stream, or an ApiError before any output."""

    def __init__(self, engine: Engine, admission: Admission, metrics: Metrics) -> None:
        self.engine = engine
        self.admission = admission
        self.metrics = metrics

    def count_tokens(self, prompt: str) -> int:
        return len(self.engine.tokenize(prompt))

    async def start(self, prompt: str, params: SamplingParams, stops: Sequence[str]) -> Stream:
        """Wait for a slot and the first chunk, so a full queue or a too-long prompt is an HTTP error.

        `params.max_tokens` 0 means: until the model stops or the context is full.
        """
        started = time.monotonic()
        if not self.engine.healthy():
            raise ApiError("overloaded", "the engine is not running: see the server log", retry_after_s=5)
        try:
            await self.admission.acquire()
        except QueueFull as exc:
            raise ApiError("overloaded", f"{exc}; retry later", retry_after_s=1) from None
        prompt_tokens = await asyncio.to_thread(self.count_tokens, prompt)
        if params.max_tokens <= 0:
            params = replace(params, max_tokens=max(1, self.engine.info.context_size - prompt_tokens))
        chunks = self.engine.generate(prompt, params)
        try:
            first = await anext(aiter(chunks))
        except BaseException as exc:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            self.admission.release()
            if isinstance(exc, PromptTooLong):
                raise ContextLengthError(exc.prompt_tokens, exc.limit) from None
            if isinstance(exc, EngineError):
                raise ApiError("overloaded", f"engine failed: {exc}", retry_after_s=5) from None
            raise
        return Stream(self, chunks, first, prompt_tokens, stops, started)
