"""One question to a model loaded in this process, no server: `inv models.run`.

The engine is the server's own (inference_server.engines), so the answer is what the server would
stream for the same prompt and sampling; its speed is measured here, between the engine's chunks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from inference_server.engines import factory
from inference_server.engines.base import ChatMessage, Chunk, EngineError, SamplingParams
from inference_server.settings import ServerSettings
from tasks.core.errors import HomelabError


@dataclass(frozen=True)
class Answer:
    model: str
    engine: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    load_s: float  # reading the model and starting the engine's worker
    first_token_s: float  # the prompt's prefill, up to the first chunk
    seconds: float  # first chunk to last
    tokens_per_s: float  # decode speed: the tokens after the first, over `seconds`


def run(
    served: ServerSettings,
    prompt: str,
    max_tokens: int,
    temperature: float,
    on_text: Callable[[str], None],
) -> Answer:
    """Load the served default model, stream one answer to `prompt` through `on_text`, unload."""
    spec = served.default
    engine = factory.create(spec, served)
    loading = time.perf_counter()
    try:
        engine.start()
        load_s = time.perf_counter() - loading
        tokens = engine.chat_tokens([ChatMessage(role="user", content=prompt)])
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature)
        pieces, last, first_token_s, seconds = asyncio.run(_stream(engine.generate(tokens, params), on_text))
    except EngineError as exc:
        raise HomelabError(f"model '{spec.name}': {exc}") from None
    finally:
        engine.close()
    if last.finish_reason == "error":
        raise HomelabError(f"model '{spec.name}' failed mid-answer: {last.error}")
    decoded = max(last.completion_tokens - 1, 0)
    return Answer(
        model=spec.name,
        engine=engine.info.engine,
        text="".join(pieces),
        finish_reason=str(last.finish_reason),
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        load_s=load_s,
        first_token_s=first_token_s,
        seconds=seconds,
        tokens_per_s=decoded / seconds if seconds > 0 else 0.0,
    )


async def _stream(
    chunks: AsyncIterator[Chunk],
    on_text: Callable[[str], None],
) -> tuple[list[str], Chunk, float, float]:
    """The text pieces, the last chunk (finish reason and counts), time to the first chunk, and from
    the first chunk to the last."""
    pieces: list[str] = []
    started = time.perf_counter()
    first: float | None = None
    last = Chunk(text="")
    async for chunk in chunks:
        first = time.perf_counter() if first is None else first
        if chunk.text:
            pieces.append(chunk.text)
            on_text(chunk.text)
        last = chunk
    ended = time.perf_counter()
    first = ended if first is None else first
    return pieces, last, first - started, ended - first
