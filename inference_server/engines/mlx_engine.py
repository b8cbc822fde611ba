"""The MLX engine: an mlx-lm model directory served from one worker thread.

On Apple Silicon this is the fast path; on Linux mlx runs on the CPU, slowly. MLX streams are
thread-local, so the worker thread both loads the model and runs every forward pass; the event loop
only tokenizes, queues requests and relays chunks. Concurrent requests share forward passes through
mlx-lm's BatchGenerator: a new request joins the running batch between two decode steps, and a
finished or cancelled one leaves it at once. Embeddings are one forward pass of the model's
hidden layers on the same thread, between two decode steps: the last hidden state (after the final
norm), mean-pooled over each sequence's own tokens (right padding is never attended: causal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_server.engines.base import (
    ChatMessage,
    Chunk,
    EmbedJob,
    EngineError,
    EngineInfo,
    FinishReason,
    PromptTooLong,
    SamplingParams,
    TokenConstraint,
    ToolSpec,
    check_embeddable,
)
from inference_server.engines.chat_template import ChatTemplate
from inference_server.engines.untrusted import chat_spans
from inference_server.toolcalls.constraint import apply_mask, new_bitmask

_log = logging.getLogger(__name__)
_WORKER_CHECK_S = 1.0  # how often a waiting stream checks that the worker is still alive


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    constraint: TokenConstraint | None = None
    failure: str = ""  # set on the worker when its constraint fails
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
            extra={"model_dir": str(model_dir), "concurrency": "continuous batching"},
        )
        self._model_dir = model_dir
        self._requests: queue.Queue[_Request | EmbedJob | None] = queue.Queue()
        self._loaded = threading.Event()
        self._closing = threading.Event()
        self._load_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._model: Any = None
        self._tokenizer: Any = None
        self._template: ChatTemplate | None = None
        self._grammar_tokenizer: Any = None
        self._encode_lock = threading.Lock()

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
        return self._encode([(text, False)])

    def chat_tokens(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> list[int]:
        specials = [str(t) for t in getattr(self._ready_tokenizer(), "added_tokens_decoder", {}).values()]
        return self._encode(chat_spans(self.render_chat, messages, tools, specials))

    def render_chat(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        """The model's own template through the same renderer as the GGUF engine, so both write
        tools, calls and results alike."""
        if self._template is None:
            raise EngineError("the MLX engine is not loaded yet")
        return self._template.render(messages, tools)

    @property
    def template_source(self) -> str | None:
        return self._ready_tokenizer().chat_template or None

    def grammar_tokenizer(self) -> Any:
        if self._grammar_tokenizer is None:
            from inference_server.toolcalls import tokenizer_from_hf

            vocab = getattr(getattr(self._model, "args", None), "vocab_size", None)  # logits width
            self._grammar_tokenizer = tokenizer_from_hf(self._ready_tokenizer(), n_vocab=vocab)
        return self._grammar_tokenizer

    async def generate(
        self, tokens: list[int], params: SamplingParams, constraint: TokenConstraint | None = None
    ) -> AsyncIterator[Chunk]:
        if not self.healthy():
            raise EngineError("the MLX engine is not running")
        if len(tokens) > self.info.context_size:
            raise PromptTooLong(len(tokens), self.info.context_size)
        request = _Request(tokens, params, asyncio.get_running_loop(), constraint)
        self._requests.put(request)
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(request.chunks.get(), _WORKER_CHECK_S)
                except TimeoutError:
                    if self._thread is None or not self._thread.is_alive():
                        yield Chunk("", "error", prompt_tokens=len(tokens), error="the MLX worker stopped")
                        return
                    continue
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            request.cancelled.set()

    async def embed(self, batch: list[list[int]]) -> list[list[float]]:
        if not self.healthy():
            raise EngineError("the MLX engine is not running")
        vocab = getattr(getattr(self._model, "args", None), "vocab_size", None) or 0
        check_embeddable(batch, self.info.context_size, vocab)
        loop = asyncio.get_running_loop()
        job = EmbedJob(batch, loop, loop.create_future())
        self._requests.put(job)
        return await job.done

    def _encode(self, spans: Sequence[tuple[str, bool]]) -> list[int]:
        """Trusted spans with special tokens parsed, client text without (no role injection)."""
        tokenizer = self._ready_tokenizer()
        bos = tokenizer.bos_token
        ids: list[int] = []
        with self._encode_lock:  # transformers flips a flag shared by every encode for split_special_tokens
            for i, (text, client_text) in enumerate(spans):
                add_bos = i == 0 and not (bos and text.startswith(bos))
                ids += tokenizer.encode(text, add_special_tokens=add_bos, split_special_tokens=client_text)
        return ids

    def close(self) -> None:
        self._closing.set()
        self._requests.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _ready_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineError("the MLX engine is not loaded yet")
        return self._tokenizer

    def _work(self) -> None:
        try:
            from mlx_lm import load

            loaded = load(str(self._model_dir))
            self._model, self._tokenizer = loaded[0], loaded[1]
            self._template = ChatTemplate(
                self._tokenizer.chat_template,
                bos_token=self._tokenizer.bos_token or "",
                eos_token=self._tokenizer.eos_token or "",
            )
        except Exception as exc:  # reported by start(), in the caller's thread
            self._load_error = exc
        finally:
            self._loaded.set()
        if self._load_error is None:
            _Batch(self._model, self._tokenizer, self.info.context_size).run(self._requests, self._closing)


class _Batch:
    """Continuous batching on mlx-lm's BatchGenerator: requests join and leave between decode steps."""

    def __init__(self, model: Any, tokenizer: Any, context_size: int) -> None:
        from mlx_lm.generate import BatchGenerator

        self._model = model
        self._tokenizer = tokenizer
        self._context_size = context_size
        self._generator = BatchGenerator(model, stop_tokens=[[t] for t in tokenizer.eos_token_ids])
        self._active: dict[int, _Active] = {}

    def run(self, requests: queue.Queue[_Request | EmbedJob | None], closing: threading.Event) -> None:
        try:
            while not closing.is_set():
                # Idle: sleep until a request comes. Busy: take whatever arrived, without waiting.
                with contextlib.suppress(queue.Empty):
                    while (request := requests.get(block=not self._active)) is not None:
                        if isinstance(request, EmbedJob):
                            self._embed(request)
                        else:
                            self._admit(request)
                if closing.is_set():
                    break
                self._drop_cancelled()
                if self._active:
                    self._step()
        finally:  # closed: what is left is cancelled; anything else killed the worker: an error
            reason: FinishReason = "cancelled" if closing.is_set() else "error"
            for active in self._active.values():
                active.finish(reason)
            with contextlib.suppress(queue.Empty):
                while True:
                    request = requests.get_nowait()
                    if isinstance(request, EmbedJob):
                        request.answer(None, EngineError("the MLX engine stopped"))
                    elif request is not None:
                        request.send(Chunk("", reason, prompt_tokens=len(request.prompt)))
            self._generator.close()

    def _admit(self, request: _Request) -> None:
        """Join the batch; a request that cannot (its sampler, its grammar) fails alone."""
        room = self._context_size - len(request.prompt)
        budget = min(request.params.max_tokens or room, room)
        if budget <= 0 or not request.prompt:
            reason: FinishReason = "length" if request.prompt else "error"
            request.send(Chunk("", reason, prompt_tokens=len(request.prompt), error="empty prompt"))
            return
        try:
            processors: list[Any] = [_Masker(request)] if request.constraint is not None else []
            [uid] = self._generator.insert(
                [request.prompt],
                [budget],
                samplers=[_sampler(request.params)],
                logits_processors=[processors],
            )
        except Exception as exc:
            _log.exception("admitting an MLX request failed")
            request.send(Chunk("", "error", prompt_tokens=len(request.prompt), error=str(exc)))
            return
        self._active[uid] = _Active(request, self._tokenizer.detokenizer)

    def _embed(self, job: EmbedJob) -> None:
        """Mean of the last hidden state over each sequence's tokens, the batch in one forward pass."""
        import mlx.core as mx

        try:
            layers = getattr(self._model, "model", None)
            if layers is None:
                raise EngineError("this MLX model does not expose its hidden states to pool")
            longest = max(len(tokens) for tokens in job.batch)
            ids = mx.array([tokens + [0] * (longest - len(tokens)) for tokens in job.batch])
            own = mx.array([[1.0] * len(t) + [0.0] * (longest - len(t)) for t in job.batch])[..., None]
            hidden = layers(ids).astype(mx.float32)
            pooled = (hidden * own).sum(axis=1) / own.sum(axis=1)
            job.answer(pooled.tolist())
        except Exception as exc:
            _log.exception("MLX embedding failed")
            job.answer(None, exc if isinstance(exc, EngineError) else EngineError(str(exc)))

    def _drop_cancelled(self) -> None:
        gone = [uid for uid, active in self._active.items() if active.request.cancelled.is_set()]
        if gone:
            self._generator.remove(gone)
            for uid in gone:
                self._active.pop(uid).finish("cancelled")

    def _step(self) -> None:
        try:
            _, responses = self._generator.next()
        except Exception:
            _log.exception("MLX generation failed")
            self._generator.remove(list(self._active))
            for active in self._active.values():
                active.finish("error")
            self._active.clear()
            return
        for response in responses:
            active = self._active[response.uid]
            if active.request.failure:  # its grammar failed inside the step: it alone ends
                self._generator.remove([response.uid])
                del self._active[response.uid]
                active.finish("error")
            elif response.finish_reason is None:
                active.add(response.token)
                if active.request.constraint is not None and active.request.constraint.stopped():
                    self._generator.remove([response.uid])
                    del self._active[response.uid]
                    active.finish("stop")
            elif response.finish_reason == "stop":  # the end-of-sequence token is not part of the answer
                del self._active[response.uid]
                active.finish("stop")
            else:
                del self._active[response.uid]
                active.add(response.token, send=False)
                active.finish("length")


@dataclass
class _Active:
    """A request in the batch: its own detokenizer (a token may end mid-character) and its count."""

    request: _Request
    detokenizer: Any
    completed: int = 0

    def add(self, token: int, *, send: bool = True) -> None:
        self.detokenizer.add_token(token)
        self.completed += 1
        if send and (text := self.detokenizer.last_segment):
            self.request.send(Chunk(text))

    def finish(self, reason: FinishReason) -> None:
        self.detokenizer.finalize()
        prompt_tokens = len(self.request.prompt)
        text = self.detokenizer.last_segment if reason != "cancelled" else ""
        self.request.send(
            Chunk(
                text,
                reason,
                prompt_tokens=prompt_tokens,
                completion_tokens=self.completed,
                error=self.request.failure,
            )
        )


class _Masker:
    """The request's constraint as an mlx-lm logits processor. mlx-lm computes step t+1's logits
    before it returns token t, so the processor itself accepts each sampled token (the last of its
    context) before masking the next; by the time a token is handed back, the grammar has seen it.
    A grammar error marks the request failed instead of raising into the shared batch."""

    def __init__(self, request: _Request) -> None:
        assert request.constraint is not None
        self.request = request
        self.constraint = request.constraint
        self.started = False

    def __call__(self, context: Any, logits: Any) -> Any:
        import mlx.core as mx
        import numpy as np

        if self.request.failure:
            return logits
        try:
            if self.started:  # the first call's context ends with the prompt, not a sampled token
                self.constraint.accept(int(context[-1].item()))
            self.started = True
            bitmask = new_bitmask(logits.shape[-1])
            if not self.constraint.fill_mask(bitmask):
                return logits
        except Exception as exc:
            _log.exception("MLX constraint failed")
            self.request.failure = str(exc) or type(exc).__name__
            return logits
        row = np.array(logits.astype(mx.float32)).reshape(-1)
        apply_mask(row, bitmask)
        return mx.array(row).reshape(logits.shape).astype(logits.dtype)


def _sampler(params: SamplingParams) -> Callable[[Any], Any]:
    """Greedy, or temperature/top-p sampling from the request's own random key: a seed reproduces
    its answer whatever else shares the batch."""
    import random

    import mlx.core as mx
    from mlx_lm.sample_utils import apply_top_p, greedy_sampler

    if params.temperature <= 0:
        return greedy_sampler  # one shared function: mlx-lm samples an all-greedy batch in one call
    key = mx.random.key(params.seed if params.seed is not None else random.getrandbits(63))

    def sample(logprobs: Any) -> Any:
        nonlocal key
        key, draw = mx.random.split(key)
        if params.top_p < 1:
            logprobs = apply_top_p(logprobs, params.top_p)
        return mx.random.categorical(logprobs * (1 / params.temperature), key=draw)

    return sample
