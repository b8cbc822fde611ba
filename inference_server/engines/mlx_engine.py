"""The MLX engine: an mlx-lm model directory served from one worker thread.

On Apple Silicon this is the fast path; on Linux mlx runs on the CPU, slowly. MLX streams are
thread-local, so the worker thread both loads the model and runs every forward pass; the event loop
only tokenizes, queues requests and relays chunks. Requests are served one at a time, in order:
mlx-lm's BatchGenerator could share decoding between streams, which is the next step here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_server.engines.base import (
    ChatMessage,
    Chunk,
    EngineError,
    EngineInfo,
    FinishReason,
    PromptTooLong,
    SamplingParams,
)

_log = logging.getLogger(__name__)
_WORKER_CHECK_S = 1.0  # how often a waiting stream checks that the worker is still alive


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    chunks: asyncio.Queue[Chunk] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, chunk: Chunk) -> None:
        """Hand a chunk to the event loop; a loop that is gone means nobody is listening."""
        try:
            self.loop.call_soon_threadsafe(self.chunks.put_nowait, chunk)
        except RuntimeError:
            self.cancelled.set()


class MlxEngine:
    def __init__(self, model_dir: Path, *, model_name: str, context_size: int) -> None:
        self.info = EngineInfo(
            model=model_name,
            engine="mlx",
            context_size=context_size,
            extra={"model_dir": str(model_dir), "concurrency": "one request at a time"},
        )
        self._model_dir = model_dir
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._loaded = threading.Event()
        self._closing = threading.Event()
        self._load_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._tokenizer: Any = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._work, name=f"mlx-engine {self.info.model}", daemon=True)
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            raise EngineError(f"cannot load MLX model {self._model_dir}: {self._load_error}")

    def healthy(self) -> bool:
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self._model is not None
            and not self._closing.is_set()
        )

    def tokenize(self, text: str) -> list[int]:
        """Token ids as generation sees them: BOS added unless the text already starts with it."""
        tokenizer = self._ready_tokenizer()
        bos = tokenizer.bos_token
        return list(tokenizer.encode(text, add_special_tokens=not (bos and text.startswith(bos))))

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        tokenizer = self._ready_tokenizer()
        if not tokenizer.chat_template:
            raise EngineError(f"{self.info.model} has no chat template; use /v1/completions")
        turns = [{"role": m.role, "content": m.content} for m in messages]
        return str(tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))

    def generate(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        """Checks run now (so a caller can answer 400 before streaming); tokens come when iterated."""
        if not self.healthy():
            raise EngineError("the MLX engine is not running")
        ids = self.tokenize(prompt)
        if len(ids) > self.info.context_size:
            raise PromptTooLong(len(ids), self.info.context_size)
        return self._stream(ids, params)

    def close(self) -> None:
        self._closing.set()
        self._requests.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    async def _stream(self, ids: list[int], params: SamplingParams) -> AsyncIterator[Chunk]:
        request = _Request(ids, params, asyncio.get_running_loop())
        self._requests.put(request)
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(request.chunks.get(), _WORKER_CHECK_S)
                except TimeoutError:
                    if self._thread is None or not self._thread.is_alive():
                        yield Chunk("", "error", prompt_tokens=len(ids))
                        return
                    continue
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            request.cancelled.set()

    def _ready_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineError("the MLX engine is not loaded yet")
        return self._tokenizer

    def _work(self) -> None:
        try:
            from mlx_lm import load

            loaded = load(str(self._model_dir))
            self._model, self._tokenizer = loaded[0], loaded[1]
        except Exception as exc:  # reported by start(), in the caller's thread
            self._load_error = exc
        finally:
            self._loaded.set()
        if self._load_error is not None:
            return
        while (request := self._requests.get()) is not None:
            if self._closing.is_set():
                request.send(Chunk("", "cancelled", prompt_tokens=len(request.prompt)))
                continue
            try:
                self._serve(request)
            except Exception:
                _log.exception("MLX generation failed")
                request.send(Chunk("", "error", prompt_tokens=len(request.prompt)))
        self._cancel_queued()

    def _cancel_queued(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                request = self._requests.get_nowait()
                if request is not None:
                    request.send(Chunk("", "cancelled", prompt_tokens=len(request.prompt)))

    def _serve(self, request: _Request) -> None:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        params, prompt_tokens = request.params, len(request.prompt)
        budget = min(params.max_tokens, self.info.context_size - prompt_tokens)
        if budget <= 0:
            request.send(Chunk("", "length", prompt_tokens=prompt_tokens))
            return
        if params.seed is not None:
            mx.random.seed(params.seed)
        sampler = make_sampler(temp=params.temperature, top_p=params.top_p if params.top_p < 1 else 0.0)
        tokens = stream_generate(
            self._model, self._tokenizer, mx.array(request.prompt), max_tokens=budget, sampler=sampler
        )
        with contextlib.closing(tokens):
            for step in tokens:
                if request.cancelled.is_set() or self._closing.is_set():
                    completed = step.generation_tokens - 1
                    request.send(
                        Chunk("", "cancelled", prompt_tokens=prompt_tokens, completion_tokens=completed)
                    )
                    return
                if step.finish_reason is None:
                    if step.text:
                        request.send(Chunk(step.text))
                    continue
                # On "stop" the last token is the end-of-sequence token: not part of the completion.
                reason: FinishReason = "stop" if step.finish_reason == "stop" else "length"
                completed = step.generation_tokens - (reason == "stop")
                request.send(
                    Chunk(step.text, reason, prompt_tokens=prompt_tokens, completion_tokens=completed)
                )
