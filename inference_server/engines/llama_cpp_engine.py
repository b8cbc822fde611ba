"""GGUF models on llama.cpp: continuous batching over one unified KV cache, with prefix reuse.

One worker thread owns the llama.cpp context and does every decode (see base.py for why). Each step it
admits waiting requests, puts one token per generating stream plus chunks of new prompts into one
batch, decodes it once, samples each stream's next token and relays the text to the event loop.

The sequences share one KV cache (llama.cpp's unified cache, llama-server's default): any one request
may use the whole context, short ones batch around it. A request is admitted when its reservation
fits beside the others': its prompt plus `max_tokens` when that fits the context ("firm"), else its
prompt plus a fair share (context / slots) that grows while the cache has room and pauses while it
has none ("elastic": what a client asking for 128k tokens, or for no limit, gets; when every running
request is paused, the one holding most of the cache ends with "length"). What does not fit waits,
first come first served. A slot keeps the KV cache of its last request while the room is not needed,
and a new request takes the free slot that shares the longest prefix with its prompt, so a
conversation's next turn recomputes only its tail; a cached prefix that must make room is saved to
the prefix store first.

Embeddings come from a second context on the same model, created on the first request for them
(most servers never embed) with `embeddings` on and the model's pooling, or mean pooling for a
decoder LM whose GGUF names none. It lives on the same worker thread, so it shares that thread's
OpenMP pool instead of starting a second one that fights the first for the cores. A batch's sequences
are packed into as few passes as fit the context (one seq_id each; a sequence is never split across
micro-batches, since pooling needs it whole), and each step decodes one pass beside the generation
step, so a big batch slows the streams down as a long prompt does but never stalls them.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import itertools
import logging
import os
import queue
import threading
from collections.abc import AsyncIterator, Sequence
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
from inference_server.engines.prefix_store import PrefixStore, SavedPrefix, common_prefix
from inference_server.engines.untrusted import chat_spans
from inference_server.toolcalls.constraint import apply_mask, new_bitmask

log = logging.getLogger(__name__)

# llama_decode's batch limit: every generating stream's token plus the prompt chunks admitted in a
# step. Longer prompts are fed over several steps, so streams already generating keep going.
BATCH_TOKENS = 2048
MICRO_BATCH_TOKENS = 512
# A free slot is reused for its cached prefix only when that prefix covers this share of the prompt.
SLOT_SIMILARITY = 0.5
# A slot about to lose at least this many cached tokens is saved to the prefix store first.
MIN_SAVED_TOKENS = 256
# An elastic request's reservation grows by this many tokens at a time while the cache has room.
GROW_TOKENS = 256
# The embedding context: the longest sequence it embeds (also capped by the model's training context)
# and how many sequences share one pass. Its compute buffer grows with the first.
EMBED_TOKENS = 2048
EMBED_SEQS = 64
# llama.cpp's OpenMP threads spin at every barrier by default. With any other busy process on the
# cores (a build, a second server, a test suite) the spinning thread holds a core its peer needs:
# decoding fell from 15.8 to 0.5 tok/s here. Sleeping waiters cost little when the box is idle.
# An explicit OMP_WAIT_POLICY in the environment wins.
OMP_WAIT_POLICY = "PASSIVE"


def usable_cpus() -> int:
    """The CPUs this process may run on; macOS has no sched_getaffinity, so there it is all of them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class WorkerDied(EngineError):
    """The worker thread hit an error it cannot recover from; the engine no longer serves."""


@dataclass(eq=False)
class _Request:
    """One generation, shared by the event loop (which reads chunks) and the worker (which writes);
    everything after `cancelled` is the worker's, and stays with the request, not the slot."""

    tokens: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    constraint: TokenConstraint | None = None
    chunks: asyncio.Queue[Chunk] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    reserved: int = 0  # KV cells promised to this request
    firm: bool = False  # max_tokens fits the context: the whole answer is reserved up front
    sampler: Any = None  # llama_sampler chain, None for greedy
    decoder: codecs.IncrementalDecoder | None = None
    cached_tokens: int = 0
    completion_tokens: int = 0


@dataclass(eq=False)
class _Embed(EmbedJob):
    """An embedding batch with the worker's bookkeeping: decoded one pass per step."""

    cancelled: bool = False  # the caller stopped waiting
    runs: list[range] | None = None  # the worker's from here on: the passes still to decode
    vectors: list[list[float]] = field(default_factory=list)


def passes(lengths: Sequence[int], tokens: int, seqs: int) -> list[range]:
    """Consecutive runs of sequences, each within `tokens` tokens and `seqs` sequences: one decode each
    (every length is at most `tokens`)."""
    runs: list[range] = []
    start, used = 0, 0
    for i, length in enumerate(lengths):
        if i > start and (used + length > tokens or i - start >= seqs):
            runs.append(range(start, i))
            start, used = i, 0
        used += length
    if lengths:
        runs.append(range(start, len(lengths)))
    return runs


@dataclass(frozen=True)
class _Kill:
    """Worker instruction: die as on a fatal decode error (operators and tests use it)."""

    reason: str


@dataclass(eq=False)
class _Slot:
    """One sequence of the context; only the worker thread touches it."""

    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV the sequence holds
    request: _Request | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not decoded yet
    next_token: int | None = None  # sampled, to be decoded next step
    paused: bool = False  # an elastic request waiting for room in the cache to grow
    last_used: int = 0


def _deliver(items: list[tuple[_Request, Chunk]]) -> None:
    for request, chunk in items:
        request.chunks.put_nowait(chunk)


class LlamaCppEngine:
    """The Engine protocol on llama-cpp-python's low-level API."""

    def __init__(
        self,
        model_path: Path,
        *,
        model_name: str,
        context_size: int,
        slots: int,
        prefix_cache_bytes: int,
        threads: int = 0,
        use_extra_bufts: bool = False,
        rpc_servers: Sequence[str] = (),
        rpc_watch: str = "",
    ) -> None:
        if slots < 1 or context_size < 2:
            raise EngineError(f"context_size {context_size} with {slots} slots cannot serve a request")
        self.model_path = model_path
        self.slots = slots
        self.threads = threads or usable_cpus()
        self.prefix_cache_bytes = prefix_cache_bytes
        # Extra buffer types repack weights for the CPU; on VMs that report AMX they fault on the
        # first decode (ggml_backend_amx_mul_mat), so they are off unless asked for.
        self.use_extra_bufts = use_extra_bufts
        self.context_size = context_size
        # Layers go to these rpc-servers too; `rpc_watch` is the unix socket of whoever keeps their
        # connections: it closes (after one line saying why) when one is lost.
        self.rpc_servers = list(rpc_servers)
        self.rpc_watch = rpc_watch
        self.info = EngineInfo(
            model=model_name,
            engine="llama_cpp",
            context_size=context_size,
            extra={"slots": str(slots), "kv_cache": "unified", "threads": str(self.threads)},
        )
        self._inbox: queue.SimpleQueue[_Request | _Embed | _Kill | None] = queue.SimpleQueue()
        self.embedding_limit = 0  # the longest sequence embed() takes, known once loaded
        self._n_vocab = 0
        self._accepting = False
        self._submit_lock = threading.Lock()
        self._vocab_lock = threading.Lock()  # tokenising never races the worker freeing the model
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._live: set[_Request] = set()  # streams being read, ended by a lost RPC helper
        self._lost = False  # an RPC helper is gone: the worker may be stuck in a call to it
        self._template: ChatTemplate | None = None
        self._template_source: str | None = None
        self._vocab: Any = None
        self._model: Any = None  # freed by close(), after the worker: see _Worker.shut_down
        self._grammar_tokenizer: Any = None
        self._bos_text = ""
        self._eos_text = ""
        self._special_texts: list[str] = []  # what special-token parsing would read as a token

    # -- the Engine protocol, called from the event loop or the server's threads -------------------

    def start(self) -> None:
        if self._thread is not None:
            raise EngineError("engine already started")
        os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)  # read when llama.cpp's OpenMP loads
        watch = self._open_watch() if self.rpc_watch else None
        self._thread = threading.Thread(target=self._run, name="llama-cpp-engine", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise EngineError(f"cannot load {self.model_path.name}: {self._failure}")
        if watch is not None:
            threading.Thread(target=self._watch, args=(watch,), name="rpc-watch", daemon=True).start()

    def healthy(self) -> bool:
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self._ready.is_set()
            and self._failure is None
            and self._accepting
        )

    def tokenize(self, text: str) -> list[int]:
        return self._tokenize([(text, False)])

    def chat_tokens(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> list[int]:
        return self._tokenize(chat_spans(self.render_chat, messages, tools, self._special_texts))

    def render_chat(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        if self._template is None:
            raise EngineError("engine not started")
        return self._template.render(messages, tools)

    @property
    def template_source(self) -> str | None:
        """The model's own chat template (None: the ChatML fallback), for choosing a tool format."""
        return self._template_source

    def grammar_tokenizer(self) -> Any:
        with self._vocab_lock:
            if self._vocab is None:
                raise self._not_running()
            if self._grammar_tokenizer is None:
                from inference_server.toolcalls import tokenizer_from_llama_vocab

                self._grammar_tokenizer = tokenizer_from_llama_vocab(self._vocab)
            return self._grammar_tokenizer

    async def generate(
        self, tokens: list[int], params: SamplingParams, constraint: TokenConstraint | None = None
    ) -> AsyncIterator[Chunk]:
        if not self.healthy():
            raise self._not_running()
        tokens = tokens or self.tokenize(self._bos_text)
        if not tokens:
            raise EngineError("the prompt is empty and the model has no BOS token to start from")
        if len(tokens) + 1 > self.context_size:
            raise PromptTooLong(len(tokens), self.context_size - 1)
        request = _Request(tokens, params, asyncio.get_running_loop(), constraint)
        self._submit(request)
        try:
            while True:
                chunk = await request.chunks.get()
                yield chunk
                if chunk.finish_reason is not None:
                    return
        finally:
            request.cancelled = True
            with self._submit_lock:
                self._live.discard(request)

    async def embed(self, batch: list[list[int]]) -> list[list[float]]:
        if not self.healthy():
            raise self._not_running()
        check_embeddable(batch, self.embedding_limit, self._n_vocab)
        loop = asyncio.get_running_loop()
        job = _Embed(batch, loop, loop.create_future())
        self._submit(job)
        try:
            return await job.done
        finally:
            job.cancelled = True

    def close(self) -> None:
        if self._thread is None or self._lost:  # a worker stuck on a lost helper never returns
            return
        self._inbox.put(None)
        self._thread.join()
        with self._vocab_lock:
            if self._model is not None:
                import llama_cpp

                llama_cpp.llama_model_free(self._model)
                self._model = None

    def kill_worker(self, reason: str) -> None:
        """Make the worker die as it would on a fatal llama.cpp error: streams in flight end with
        'error', healthy() turns false and later requests are refused."""
        self._inbox.put(_Kill(reason))

    def _tokenize(self, spans: Sequence[tuple[str, bool]]) -> list[int]:
        """Spans of trusted text (special tokens parsed) and client text (parsed as plain text);
        BOS first unless the text already starts with it."""
        import llama_cpp

        ids: list[int] = []
        with self._vocab_lock:
            if self._vocab is None:
                raise self._not_running()
            for i, (text, client_text) in enumerate(spans):
                data = text.encode(errors="replace")  # a lone surrogate is the client's mistake
                room = len(data) + 2
                buf = (llama_cpp.llama_token * room)()
                add_bos = i == 0 and not (self._bos_text and text.startswith(self._bos_text))
                special = not client_text
                n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, room, add_bos, special)
                ids += buf[:n]
        return ids

    def _not_running(self) -> EngineError:
        return EngineError(f"engine worker is not running ({self._failure or 'stopped'})")

    def _submit(self, request: _Request | _Embed) -> None:
        with self._submit_lock:
            if not self._accepting:
                raise self._not_running()
            if isinstance(request, _Request):
                self._live.add(request)
            self._inbox.put(request)

    def _open_watch(self) -> Any:
        """The RPC keeper's watch socket, once it says its helpers are all there ("ok"); loading with a
        lost one would abort the process inside llama.cpp, so that is refused here."""
        import socket

        watch = socket.socket(socket.AF_UNIX)
        try:
            watch.connect(self.rpc_watch)
            said = watch.makefile().readline().strip()
        except OSError as exc:
            said = f"the RPC helpers' tunnel keeper is gone ({exc})"
        if said != "ok":
            watch.close()
            raise EngineError(f"an RPC helper is lost: {said or 'the tunnel keeper stopped'}")
        return watch

    def _watch(self, watch: Any) -> None:
        """Block on the RPC keeper's socket; when it speaks or closes, a helper is lost: refuse new
        requests and end the streams in flight with its reason, without waiting for the worker
        (a decode on a lost helper never returns)."""
        try:
            with watch:
                said = watch.makefile().readline().strip()
        except OSError as exc:
            said = f"cannot watch the RPC helpers ({exc})"
        reason = said or "the RPC helpers' tunnel keeper stopped"
        log.error("RPC helper lost: %s", reason)
        with self._submit_lock:
            self._lost = True
            self._accepting = False
            self._failure = EngineError(f"an RPC helper is lost: {reason}")
            live, self._live = self._live, set()
        for request in live:
            chunk = Chunk("", finish_reason="error", prompt_tokens=len(request.tokens), error=reason)
            request.loop.call_soon_threadsafe(request.chunks.put_nowait, chunk)

    # -- the worker thread -------------------------------------------------------------------------

    def _run(self) -> None:
        worker: _Worker | None = None
        try:
            worker = _Worker(self)
            with self._submit_lock:
                self._accepting = True
            self._ready.set()
            worker.serve()
            reason: FinishReason = "cancelled"
        except BaseException as exc:
            log.exception("llama.cpp engine worker died")
            self._failure = exc
            reason = "error"
        finally:
            with self._submit_lock:
                self._accepting = False
            self._ready.set()
            orphans = []
            while not self._inbox.empty():
                item = self._inbox.get()
                if isinstance(item, _Request):
                    orphans.append(item)
                elif isinstance(item, EmbedJob):
                    item.answer(None, self._not_running())
            if worker is not None:
                with self._vocab_lock:
                    self._vocab = None
                    worker.shut_down(reason, orphans)


class _Worker:
    """Owns the llama.cpp model, context and batch; lives and dies on the engine's worker thread."""

    def __init__(self, engine: LlamaCppEngine) -> None:
        import llama_cpp
        import numpy as np

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # silence llama.cpp's stderr
        self.engine = engine
        self.ll = llama_cpp
        self.np = np
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.use_extra_bufts = engine.use_extra_bufts
        if self._split(model_params):
            from inference_server.engines.rpc import placement

            with placement() as placed:
                self.model = llama_cpp.llama_model_load_from_file(
                    str(engine.model_path).encode(), model_params
                )
            engine.info.extra["devices"] = ", ".join(
                f"{dev}: {placed.layers.get(dev, 0)} layers {placed.weight_bytes.get(dev, 0) // 2**20} MiB"
                for dev in dict.fromkeys([*placed.layers, *placed.weight_bytes])
            )
        else:
            self.model = llama_cpp.llama_model_load_from_file(str(engine.model_path).encode(), model_params)
        if not self.model:
            raise EngineError(f"{engine.model_path}: not a loadable GGUF model")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        ctx_params = llama_cpp.llama_context_default_params()  # keeps flash attention on AUTO
        ctx_params.n_ctx = engine.context_size
        ctx_params.n_seq_max = engine.slots
        ctx_params.kv_unified = True
        ctx_params.n_batch = BATCH_TOKENS
        ctx_params.n_ubatch = MICRO_BATCH_TOKENS
        ctx_params.n_threads = ctx_params.n_threads_batch = engine.threads
        self.ctx = llama_cpp.llama_init_from_model(self.model, ctx_params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.bitmask = new_bitmask(self.n_vocab)
        self.batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
        self.slots = [_Slot(seq_id=i) for i in range(engine.slots)]
        self.elastic_share = max(GROW_TOKENS, self.n_ctx // engine.slots)
        self.waiting: list[_Request] = []
        self.outbox: list[tuple[_Request, Chunk]] = []
        self.pieces: dict[int, bytes] = {}
        self.store = PrefixStore(engine.prefix_cache_bytes)
        self.clock = itertools.count(1)

        bos = llama_cpp.llama_vocab_bos(self.vocab)
        eos = llama_cpp.llama_vocab_eos(self.vocab)
        engine._bos_text = self._piece(bos, special=True).decode(errors="replace") if bos >= 0 else ""
        engine._eos_text = self._piece(eos, special=True).decode(errors="replace") if eos >= 0 else ""
        engine._template_source = self._metadata("tokenizer.chat_template")
        parsed = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        engine._special_texts = [
            self._piece(t, special=True).decode(errors="replace")
            for t in range(self.n_vocab)
            if llama_cpp.llama_vocab_get_attr(self.vocab, t) & parsed
        ]
        engine._template = ChatTemplate(
            engine._template_source, bos_token=engine._bos_text, eos_token=engine._eos_text
        )
        engine._vocab = self.vocab
        engine._model = self.model
        engine._n_vocab = self.n_vocab
        trained = llama_cpp.llama_model_n_ctx_train(self.model)
        engine.embedding_limit = min(self.n_ctx, EMBED_TOKENS, trained if trained > 0 else self.n_ctx)
        self.embedder: _Embedder | None = None
        self.embeds: list[_Embed] = []
        engine.context_size = self.n_ctx
        engine.info = EngineInfo(engine.info.model, engine.info.engine, self.n_ctx, engine.info.extra)
        self._warm_up(max(bos, 0))

    def _metadata(self, key: str) -> str | None:
        size = self.ll.llama_model_meta_val_str(self.model, key.encode(), None, 0)
        if size < 0:
            return None
        buf = ctypes.create_string_buffer(size + 1)
        self.ll.llama_model_meta_val_str(self.model, key.encode(), buf, size + 1)
        return buf.value.decode()

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self.ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def _warm_up(self, token: int) -> None:
        """One decode on this thread, so its OpenMP pool exists before the first request."""
        self._add(0, token, 0, 0, logits=True)
        self._decode(1)
        self.ll.llama_memory_clear(self.mem, True)

    # -- the loop ----------------------------------------------------------------------------------

    def serve(self) -> None:
        inbox = self.engine._inbox
        while True:
            busy = self.waiting or self.embeds or any(slot.request for slot in self.slots)
            try:
                item = inbox.get_nowait() if busy else inbox.get()
            except queue.Empty:
                item = _NOTHING
            while item is not _NOTHING:
                if item is None:
                    return
                if isinstance(item, _Kill):
                    raise WorkerDied(item.reason)
                if isinstance(item, _Embed):
                    self.embeds.append(item)
                else:
                    self.waiting.append(item)
                try:
                    item = inbox.get_nowait()
                except queue.Empty:
                    item = _NOTHING
            self._admit()
            self._step()
            self._embed_pass()
            self._flush()

    def _embed_pass(self) -> None:
        """One pass of the oldest embedding batch, answered after its last; its failure is its own."""
        while self.embeds and self.embeds[0].cancelled:
            self.embeds.pop(0)
        if not self.embeds:
            return
        job = self.embeds[0]
        try:
            if self.embedder is None:
                self.embedder = _Embedder(self)
            if job.runs is None:
                job.runs = passes([len(s) for s in job.batch], self.embedder.limit, EMBED_SEQS)
            run = job.runs.pop(0)
            job.vectors += self.embedder.run([job.batch[i] for i in run])
            if not job.runs:
                self.embeds.pop(0)
                job.answer(job.vectors)
        except Exception as exc:
            log.exception("embedding failed")
            self.embeds.pop(0)
            job.answer(None, exc if isinstance(exc, EngineError) else EngineError(str(exc)))

    # -- room in the KV cache ----------------------------------------------------------------------

    def _reservation(self, request: _Request) -> tuple[int, bool]:
        """Cells to promise a request, and whether that covers its whole answer."""
        prompt = len(request.tokens)
        room = self.n_ctx - prompt
        wanted = request.params.max_tokens
        if 0 < wanted <= room:
            return prompt + wanted, True
        return prompt + min(room, self.elastic_share), False

    def _committed(self) -> int:
        """Cells promised to running requests plus cells idle slots still hold."""
        return sum(s.request.reserved if s.request else len(s.cached) for s in self.slots)

    def _make_room(self, spare: _Slot | None = None) -> None:
        """Drop idle slots' cached prefixes, least recently used first (saving the long ones), until
        the promises fit the cache."""
        idle = sorted(
            (s for s in self.slots if s.request is None and s.cached and s is not spare),
            key=lambda s: s.last_used,
        )
        for slot in idle:
            if self._committed() <= self.n_ctx:
                return
            self._evict(slot)

    def _evict(self, slot: _Slot) -> None:
        if len(slot.cached) >= MIN_SAVED_TOKENS:
            self._save(slot)
        self.ll.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        slot.cached = []

    def _admit(self) -> None:
        while self.waiting:
            request = self.waiting[0]
            if request.cancelled:
                self.waiting.pop(0)
                continue
            free = [slot for slot in self.slots if slot.request is None]
            if not free or any(slot.paused for slot in self.slots):
                return  # a running request waiting for room comes before new ones
            reserved, firm = self._reservation(request)
            active = sum(s.request.reserved for s in self.slots if s.request is not None)
            if active + reserved > self.n_ctx:
                return  # first come, first served: it waits for room, and so do the ones behind it
            self.waiting.pop(0)
            try:
                self._place(request, free, reserved, firm)
            except Exception as exc:  # one request's failure (its sampler, its grammar) is its own
                log.exception("admitting a request failed")
                self.outbox.append((request, Chunk("", "error", len(request.tokens), error=str(exc))))
                for slot in self.slots:
                    if slot.request is request:
                        self._release(slot)

    def _place(self, request: _Request, free: list[_Slot], reserved: int, firm: bool) -> None:
        slot, keep = self._pick_slot(free, request.tokens)
        if len(slot.cached) - keep >= MIN_SAVED_TOKENS:
            self._save(slot)
        keep = self._trim(slot, min(keep, len(request.tokens) - 1))
        request.reserved, request.firm = reserved, firm
        slot.request = request
        self._make_room(spare=slot)
        saved, shared = self.store.best(request.tokens)
        fits = self._committed() - reserved + len(saved.tokens) <= self.n_ctx if saved else False
        if saved is not None and shared > keep and fits:
            keep = self._trim(slot, min(self._restore(slot, saved, shared), len(request.tokens) - 1))
        slot.pending = request.tokens[keep:]
        slot.next_token = None
        slot.last_used = next(self.clock)
        request.cached_tokens = keep
        request.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        request.sampler = self._sampler(request.params)

    def _trim(self, slot: _Slot, keep: int) -> int:
        """Keep the first `keep` cached tokens; a memory that cannot cut a sequence short (recurrent
        models) drops it whole. Returns how many were kept."""
        if not self.ll.llama_memory_seq_rm(self.mem, slot.seq_id, keep, -1):
            self.ll.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            keep = 0
        del slot.cached[keep:]
        return keep

    def _grow(self, slot: _Slot) -> bool:
        """Room for one more token, growing an elastic request's reservation; False while the cache
        has none left (the request pauses until it has)."""
        request = slot.request
        assert request is not None
        if len(slot.cached) < request.reserved:
            return True
        if request.firm or len(slot.cached) >= self.n_ctx:
            return False
        request.reserved = min(self.n_ctx, request.reserved + GROW_TOKENS)
        self._make_room()
        if self._committed() <= self.n_ctx:
            return True
        request.reserved = len(slot.cached)
        return False

    def _save(self, slot: _Slot) -> None:
        """Copy a slot's sequence state into the prefix store before it is overwritten."""
        size = self.ll.llama_state_seq_get_size(self.ctx, slot.seq_id)
        if not self.store.fits(size):
            return
        state = (ctypes.c_uint8 * size)()
        if self.ll.llama_state_seq_get_data(self.ctx, state, size, slot.seq_id) == size:
            self.store.put(SavedPrefix(tuple(slot.cached), state, size))

    def _restore(self, slot: _Slot, saved: SavedPrefix, shared: int) -> int:
        """Load a saved prefix into a slot; how many of its tokens the request can keep."""
        self.ll.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
        self.store.pop(saved)
        if self.ll.llama_state_seq_set_data(self.ctx, saved.state, saved.size, slot.seq_id) == 0:
            self.ll.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            slot.cached = []
            return 0
        slot.cached = list(saved.tokens)
        return shared

    @staticmethod
    def _pick_slot(free: list[_Slot], tokens: list[int]) -> tuple[_Slot, int]:
        """The free slot sharing the longest prefix (and how long), if that is a real share of the
        prompt (as llama-server's slot similarity); otherwise the least recently used one, so a short
        unrelated prompt does not evict a long prefix that its owner will send again."""
        shares = [(common_prefix(slot.cached, tokens), -slot.last_used, slot) for slot in free]
        shared, _, best = max(shares, key=lambda s: s[:2])
        if shared >= SLOT_SIMILARITY * len(tokens):
            return best, shared
        _, _, oldest = min(shares, key=lambda s: -s[1])
        return oldest, common_prefix(oldest.cached, tokens)

    def _sampler(self, params: SamplingParams) -> Any:
        if params.temperature <= 0:
            return None
        ll = self.ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if params.top_p < 1:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(params.top_p, 1))
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(params.temperature))
        seed = ll.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
        return chain

    # -- one step ----------------------------------------------------------------------------------

    def _step(self) -> None:
        for slot in self.slots:
            if slot.request is not None and slot.request.cancelled:
                self._finish(slot, "cancelled")
        self._resume()
        n = 0
        sample_at: list[tuple[_Slot, int]] = []
        for slot in self.slots:
            if slot.request is not None and slot.next_token is not None and not slot.paused:
                self._add(n, slot.next_token, len(slot.cached), slot.seq_id, logits=True)
                slot.cached.append(slot.next_token)
                slot.next_token = None
                sample_at.append((slot, n))
                n += 1
        prefilling = [s for s in self.slots if s.request is not None and s.pending]
        for slot in sorted(prefilling, key=lambda s: s.last_used):
            take = slot.pending[: BATCH_TOKENS - n]
            if not take:
                break
            for token in take:
                self._add(n, token, len(slot.cached), slot.seq_id, logits=False)
                slot.cached.append(token)
                n += 1
            slot.pending = slot.pending[len(take) :]
            if not slot.pending:
                self.batch.logits[n - 1] = True
                sample_at.append((slot, n - 1))
        if n == 0:
            return
        self._decode(n)
        for slot, index in sample_at:
            try:
                self._sample(slot, index)
            except Exception as exc:  # its constraint failed: that request ends, the batch goes on
                log.exception("sampling failed")
                self._finish(slot, "error", str(exc))

    def _resume(self) -> None:
        """Paused requests go on once the cache has room again. When every running request is
        paused, none will free room: the one holding the most gives it up (finish "length")."""
        running = [s for s in self.slots if s.request is not None]
        for slot in running:
            if slot.paused and self._grow(slot):
                slot.paused = False
        paused = [s for s in running if s.paused]
        if paused and len(paused) == len(running):
            self._finish(max(paused, key=lambda s: len(s.cached)), "length")

    def _add(self, i: int, token: int, pos: int, seq_id: int, *, logits: bool) -> None:
        batch = self.batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits

    def _decode(self, n: int) -> None:
        self.batch.n_tokens = n
        rc = self.ll.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise WorkerDied(f"llama_decode failed with code {rc}")

    def _sample(self, slot: _Slot, index: int) -> None:
        request = slot.request
        assert request is not None and request.decoder is not None
        constraint = request.constraint
        logits = self.ll.llama_get_logits_ith(self.ctx, index)
        if constraint is not None and constraint.fill_mask(self.bitmask):
            apply_mask(self.np.ctypeslib.as_array(logits, shape=(self.n_vocab,)), self.bitmask)
        if request.sampler is None:
            token = int(self.np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).argmax())
        else:
            token = self.ll.llama_sampler_sample(request.sampler, self.ctx, index)
        slot.last_used = next(self.clock)
        if constraint is not None:
            constraint.accept(token)
        if self.ll.llama_vocab_is_eog(self.vocab, token):
            self._finish(slot, "stop")
            return
        request.completion_tokens += 1
        piece = self.pieces.get(token)
        if piece is None:  # control tokens as text too: some families open a tool call with one
            piece = self.pieces[token] = self._piece(token, special=True)
        text = request.decoder.decode(piece)
        if text:
            self.outbox.append((request, Chunk(text)))
        if constraint is not None and constraint.stopped():
            self._finish(slot, "stop")
        elif request.completion_tokens >= (request.params.max_tokens or self.n_ctx):
            self._finish(slot, "length")
        elif len(slot.cached) >= self.n_ctx:
            self._finish(slot, "length")  # the context is full
        else:
            slot.next_token = token
            slot.paused = not self._grow(slot)

    def _finish(self, slot: _Slot, reason: FinishReason, error: str = "") -> None:
        request = slot.request
        assert request is not None
        if not request.cancelled:
            tail = request.decoder.decode(b"", final=True) if request.decoder else ""
            usage = Chunk(
                tail,
                finish_reason=reason,
                prompt_tokens=len(request.tokens),
                completion_tokens=request.completion_tokens,
                cached_tokens=request.cached_tokens,
                error=error,
            )
            self.outbox.append((request, usage))
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        request = slot.request
        if request is not None and request.sampler is not None:
            self.ll.llama_sampler_free(request.sampler)
            request.sampler = None
        slot.request = None
        slot.next_token = None
        slot.paused = False
        slot.pending = []

    def _flush(self) -> None:
        """Relay this step's chunks: one wake-up per event loop, not one per token."""
        if not self.outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Chunk]]] = {}
        for request, chunk in self.outbox:
            by_loop.setdefault(request.loop, []).append((request, chunk))
        self.outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for request, _ in items:
                    request.cancelled = True

    def _split(self, model_params: Any) -> int:
        """With RPC helpers (registered here, once): `model_params` set for an even share of the layers
        on each and the rest on this host; how many helper devices."""
        from inference_server.engines import rpc

        names = rpc.add_servers(self.engine.rpc_servers)
        if names:
            from inference_server.engines.memory import read_gguf_metadata

            meta = read_gguf_metadata(self.engine.model_path)
            n_layer = int(meta[f"{meta['general.architecture']}.block_count"])
            model_params.n_gpu_layers = rpc.layer_split(n_layer, len(names))
            self.tensor_split = (ctypes.c_float * self.ll.llama_max_devices())(*([1.0] * len(names)))
            model_params.tensor_split = self.tensor_split
        return len(names)

    def shut_down(self, reason: FinishReason, orphans: list[_Request]) -> None:
        """End every stream with `reason` and free the context. The model stays until the engine's
        close(): the grammar tokenizer reads its vocabulary from other threads."""
        for slot in self.slots:
            if slot.request is not None:
                self._finish(slot, reason)
        for request in self.waiting + orphans:
            self.outbox.append((request, Chunk("", finish_reason=reason, prompt_tokens=len(request.tokens))))
        self.waiting = []
        self._flush()
        for job in self.embeds:
            job.answer(None, EngineError(f"the engine is shutting down or failed ({reason})"))
        if self.embedder is not None:
            self.embedder.close()
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)


class _Embedder:
    """The embedding context on the worker's model; lives on the worker thread, made on first use."""

    def __init__(self, worker: _Worker) -> None:
        ll = self.ll = worker.ll
        self.limit = worker.engine.embedding_limit
        params = ll.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = self._pooling(worker)
        params.n_ctx = params.n_batch = params.n_ubatch = self.limit  # a sequence stays in one ubatch
        params.n_seq_max = EMBED_SEQS
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = worker.engine.threads
        self.ctx = ll.llama_init_from_model(worker.model, params)
        if not self.ctx:
            raise EngineError("llama.cpp could not create an embedding context (out of memory?)")
        self.mem = ll.llama_get_memory(self.ctx)
        self.n_embd = ll.llama_model_n_embd(worker.model)
        self.batch = ll.llama_batch_init(self.limit, 0, 1)

    @staticmethod
    def _pooling(worker: _Worker) -> int:
        """The model's own pooling when its GGUF names one, else mean (a decoder LM names none)."""
        ll = worker.ll
        arch = worker._metadata("general.architecture") or ""
        named = worker._metadata(f"{arch}.pooling_type")
        if named is None or int(named) == ll.LLAMA_POOLING_TYPE_NONE:
            return int(ll.LLAMA_POOLING_TYPE_MEAN)
        return int(ll.LLAMA_POOLING_TYPE_UNSPECIFIED)  # the context reads it from the model

    def run(self, sequences: list[list[int]]) -> list[list[float]]:
        """One decode: sequences that fit the context together (see `passes`), one seq_id each."""
        n = 0
        for seq_id, tokens in enumerate(sequences):
            for pos, token in enumerate(tokens):
                self.batch.token[n] = token
                self.batch.pos[n] = pos
                self.batch.n_seq_id[n] = 1
                self.batch.seq_id[n][0] = seq_id
                self.batch.logits[n] = True
                n += 1
        self.batch.n_tokens = n
        try:
            rc = self.ll.llama_decode(self.ctx, self.batch)
            if rc != 0:
                raise EngineError(f"llama_decode failed with code {rc} on an embedding batch")
            vectors = []
            for seq_id in range(len(sequences)):
                vector = self.ll.llama_get_embeddings_seq(self.ctx, seq_id)
                if not vector:
                    raise EngineError("llama.cpp returned no pooled embedding")
                vectors.append(vector[: self.n_embd])
            return vectors
        finally:
            self.ll.llama_memory_clear(self.mem, True)

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)


_NOTHING: Any = object()
