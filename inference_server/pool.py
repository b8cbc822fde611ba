"""The models one server may serve, loaded on demand under one memory budget.

A request holds its model from before its prompt is tokenised until its stream closes; a held model
is never evicted. Loading a model that does not fit beside the others first evicts idle ones, least
recently used first, and waits while the room is held by busy ones. Loads go one at a time and in the
order their first waiter arrived, so a big model waiting for memory is not overtaken by small ones.

Grouping (llama-swap#612): while a model waits for memory, the loaded models keep admitting new
requests for `swap_grace_s`; after that their doors close, they drain, and the waiting model loads.
Interleaved requests for two models that cannot both fit then swap once per grace period, not once
per request. Idle models unload after their keep-alive (the last request's `keep_alive`, else the
model's); pinned ones stay whatever happens.

Everything here runs on the event loop; only an engine's start and close run on a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from inference_server.admission import Admission
from inference_server.engines import factory, memory
from inference_server.engines.base import Engine, EngineError
from inference_server.errors import ApiError
from inference_server.generation import Generation
from inference_server.metrics import Metrics
from inference_server.settings import ModelSpec, ServerSettings

log = logging.getLogger("inference_server")

ModelState = Literal["unloaded", "loading", "loaded", "unloading"]
UnloadReason = Literal["evicted", "idle", "keep_alive_0", "admin"]
EXPIRY_CHECK_S = 1.0


@dataclass(frozen=True)
class Footprint:
    """What a model counts against the budget while loaded: the estimate plus its prefix store's cap."""

    estimate: memory.MemoryEstimate | None  # None: the file could not be read (its size is counted)
    prefix_cache: int
    embedding: int  # the embedding context, made on the first embedding request
    bytes: int
    on_helpers: int = 0  # the weights and KV cache of the layers RPC helpers hold, not counted here

    def too_big(self, name: str, room: int, beside_pinned: bool = False) -> str:
        """The one line that refuses a model that cannot fit, with the numbers and the fixes."""
        parts = (
            f"weights {_mb(self.estimate.weights)} + KV cache {_mb(self.estimate.kv_cache)} + "
            f"compute {_mb(self.estimate.compute)} + prefix cache {_mb(self.prefix_cache)} + "
            f"embedding context {_mb(self.embedding)}"
            + (f" - on the RPC helpers {_mb(self.on_helpers)}" if self.on_helpers else "")
            if self.estimate
            else "its files"
        )
        where = " left beside the pinned models" if beside_pinned else ""
        return (
            f"model '{name}' needs {_mb(self.bytes)} ({parts}) but the memory budget has {_mb(room)}{where}: "
            "serve it with fewer slots or a smaller context, raise server.memory_budget_mb, "
            "or use a smaller quant"
        )


def footprint(spec: ModelSpec, settings: ServerSettings) -> Footprint:
    try:
        estimate: memory.MemoryEstimate | None = memory.estimate(
            spec.path, spec.format, spec.context_size, spec.slots
        )
    except EngineError as exc:  # the load will fail with the same reason
        log.warning("cannot estimate %s: %s", spec.name, exc)
        estimate = None
    llama = factory.choose(settings.engine, spec.format) == "llama_cpp"
    prefix = settings.prefix_cache_bytes if llama else 0  # only the llama.cpp engine keeps a store
    embedding = 0
    if llama and estimate is not None:  # a second context: its cache and buffers, the weights shared
        from inference_server.engines.llama_cpp_engine import EMBED_SEQS, EMBED_TOKENS

        extra = memory.estimate(spec.path, spec.format, min(spec.context_size, EMBED_TOKENS), EMBED_SEQS)
        embedding = extra.kv_cache + extra.compute
    on_helpers = 0
    if llama and estimate is not None and settings.rpc_servers:  # their share of the layers is theirs
        from inference_server.engines.rpc import helpers_share

        on_helpers = int((estimate.weights + estimate.kv_cache) * helpers_share(len(settings.rpc_servers)))
    total = (estimate.total if estimate else _size(spec)) + prefix + embedding - on_helpers
    return Footprint(estimate, prefix, embedding, total, on_helpers)


@dataclass
class Model:
    """One servable model and where it is in its life."""

    spec: ModelSpec
    need: Footprint
    pinned: bool
    keep_alive_s: float  # after the last request: that request's keep_alive, else the spec's
    state: ModelState = "unloaded"
    engine: Engine | None = None
    generation: Generation | None = None
    held: int = 0
    last_used: float = 0.0  # time.monotonic() of the last release (or of the load)
    resident_bytes: int = 0  # measured: the process's RSS growth over the load
    load_s: float = 0.0
    loaded_once: bool = False
    draining: bool = False  # unload once the requests in flight end (an admin unload of a busy model)
    last_error: str = ""
    transition: asyncio.Future[None] | None = field(default=None, repr=False)  # a load or an unload

    @property
    def idle(self) -> bool:
        return self.state == "loaded" and self.held == 0

    def expires_in(self, now: float) -> float | None:
        """Seconds until an idle unload; None while held, pinned, kept forever or not loaded."""
        if not self.idle or self.pinned or self.keep_alive_s < 0:
            return None
        return max(0.0, self.last_used + self.keep_alive_s - now)


@dataclass
class _Waiter:
    model: str
    since: float
    granted: bool = False  # the model loaded and this waiter already holds it
    error: str = ""  # the load this waiter waited for failed: it answers with this, and retries nothing


class Held:
    """A model held for one request; `release()` (idempotent) lets it be evicted again."""

    def __init__(self, pool: Pool, model: Model, keep_alive_s: float | None) -> None:
        self._pool = pool
        self.model = model
        self.keep_alive_s = keep_alive_s
        self._released = False

    @property
    def generation(self) -> Generation:
        assert self.model.generation is not None, "a held model is loaded"
        return self.model.generation

    def release(self, *, served: bool = True) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self, served=served)


class Pool:
    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models = {spec.name: self._model(spec) for spec in settings.models}
        self._waiting: list[_Waiter] = []
        self._tick: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        metrics.track_models(self)

    def _model(self, spec: ModelSpec) -> Model:
        return Model(spec, footprint(spec, self.settings), spec.pinned, spec.keep_alive_s)

    # -- what routes ask -------------------------------------------------------------------------

    def route(self, requested: str) -> Model:
        """The model a request names (or an alias routes to), else a 404 listing what is served."""
        spec = self.settings.route(requested)
        if spec is None:
            names = ", ".join(self.listed_names())
            raise ApiError("not_found", f"model '{requested}' is not served here; available: {names}")
        return self.models[spec.name]

    def listed_names(self) -> list[str]:
        """Every model, then every alias that is a plain name (patterns are matched, not listed)."""
        aliases = [
            a.pattern for a in self.settings.model_aliases if a.is_name and a.pattern not in self.models
        ]
        return [*self.models, *aliases]

    @property
    def default(self) -> Model:
        return self.models[self.settings.default_model]

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def used_bytes(self) -> int:
        return sum(m.need.bytes for m in self.models.values() if m.state != "unloaded")

    async def hold(self, requested: str, keep_alive_s: float | None = None, *, bounded: bool = True) -> Held:
        """The model loaded and held for one request; waits while it loads or while memory is busy,
        and refuses at once what can never fit. A model's waiters are bounded by what its admission
        takes (slots plus queue): a request for an unloaded model waits for the load even with no queue."""
        model = self.route(requested)
        self._refuse_if_never_fits(model)
        if model.state == "loaded" and self._door_open(model):
            model.held += 1
            return self._held(model, keep_alive_s)
        bound = model.spec.slots + self.settings.queue_size
        if bounded and sum(w.model == model.spec.name for w in self._waiting) >= bound:
            raise ApiError(
                "overloaded",
                f"server busy: {bound} requests wait for model '{model.spec.name}'; retry later",
                retry_after_s=2,
            )
        waiter = _Waiter(model.spec.name, time.monotonic())
        self._waiting.append(waiter)
        try:
            while not waiter.granted:
                if waiter.error:
                    raise ApiError(
                        "overloaded",
                        f"model '{model.spec.name}' failed to load: {waiter.error}",
                        retry_after_s=5,
                    )
                if model.state == "loaded" and self._door_open(model):
                    model.held += 1
                    waiter.granted = True
                    break
                self._schedule()
                if model.state == "loading" and model.transition is not None:
                    await asyncio.shield(model.transition)
                else:
                    await asyncio.shield(self._changed())
        except BaseException:
            if waiter.granted:  # cancelled after the load handed it the model: give it back
                self._release(Held(self, model, None), served=False)
            raise
        finally:
            self._waiting.remove(waiter)
        return self._held(model, keep_alive_s)

    def _held(self, model: Model, keep_alive_s: float | None) -> Held:
        self.metrics.model_requests.labels(model.spec.name).inc()
        return Held(self, model, keep_alive_s)

    # -- admin ----------------------------------------------------------------------------------

    def add(self, spec: ModelSpec) -> Model:
        """Serve one more model from now on (one just downloaded); a known name gets the new spec
        while it is not loaded."""
        known = self.models.get(spec.name)
        if known is not None and known.state != "unloaded":
            return known
        others = [s for s in self.settings.models if s.name != spec.name]
        self.settings = self.settings.model_copy(update={"models": [*others, spec]})
        self.models[spec.name] = self._model(spec)
        return self.models[spec.name]

    def remove(self, name: str) -> None:
        """Stop serving a model whose files were deleted, unless it is the default or loaded again."""
        if self.models[name].state != "unloaded" or name == self.settings.default_model:
            return
        del self.models[name]
        models = [s for s in self.settings.models if s.name != name]
        aliases = [a for a in self.settings.model_aliases if a.model != name]
        self.settings = self.settings.model_copy(update={"models": models, "model_aliases": aliases})

    async def load(self, name: str, *, pin: bool = False) -> Model:
        """Load (as a request would) and optionally pin; the model then idles for its keep-alive."""
        held = await self.hold(name, bounded=False)
        held.model.pinned = held.model.pinned or pin
        held.release(served=False)
        return held.model

    async def unload(self, name: str) -> Model:
        """Unpin and unload now; a model with requests in flight unloads when the last one ends."""
        model = self.route(name)
        model.pinned = False
        if model.state == "loading" and model.transition is not None:
            await asyncio.shield(model.transition)
        if model.idle:
            await self._unload(model, "admin")
        elif model.state == "loaded":
            model.draining = True
        return model

    def health(self) -> tuple[Literal["ok", "loading", "error"], str]:
        """ok while the default model can serve: loaded with its engine alive, or unloaded after
        having loaded once (a request loads it again); else why not."""
        model = self.default
        if model.state == "loaded":
            if model.engine is not None and model.engine.healthy():
                return "ok", ""
            return "error", "the engine worker stopped: restart the server (see its log)"
        if model.loaded_once:
            return "ok", ""
        if model.last_error:
            return "error", f"loading failed: {model.last_error}"
        return "loading", f"loading {model.spec.name}"

    # -- life of the pool -----------------------------------------------------------------------

    async def run(self) -> None:
        """Load the default and the pinned models, then unload idle models as they expire."""
        for spec in [self.settings.default, *(s for s in self.settings.models if s.pinned)]:
            try:
                await self.load(spec.name, pin=spec.pinned)
            except ApiError as exc:  # health reports it; a request tries again
                log.error("%s", exc.message)
        while True:
            now = time.monotonic()
            for model in list(self.models.values()):
                expires = model.expires_in(now)
                if expires is not None and expires <= 0:
                    await self._unload(model, "idle")
            await asyncio.sleep(EXPIRY_CHECK_S)

    async def close(self) -> None:
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
        for model in self.models.values():
            if model.engine is not None:
                await asyncio.to_thread(model.engine.close)
                model.engine = model.generation = None
                model.state = "unloaded"

    # -- the scheduler --------------------------------------------------------------------------

    def _release(self, held: Held, *, served: bool) -> None:
        model = held.model
        model.held -= 1
        model.last_used = time.monotonic()
        if served:
            model.keep_alive_s = model.spec.keep_alive_s if held.keep_alive_s is None else held.keep_alive_s
        if model.idle and not model.pinned and (model.draining or (served and model.keep_alive_s == 0)):
            self._begin_unload(model, "admin" if model.draining else "keep_alive_0")
        self._notify()
        self._schedule()

    def _door_open(self, model: Model) -> bool:
        """Closed to new requests once a model that cannot fit until busy ones drain has waited out
        the grace (a pinned model is never evicted, so closing it would help nobody)."""
        if model.pinned:
            return True
        cutoff = time.monotonic() - self.settings.swap_grace_s
        blocked = {w.model for w in self._waiting if w.model != model.spec.name and w.since <= cutoff}
        return not any(
            self.models[name].state == "unloaded" and self._victims(self.models[name], None) is None
            for name in blocked
        )

    def _schedule(self) -> None:
        """Start the next load: the oldest waiter's model, once it fits after evicting idle models.
        Within the grace a model that served a request after the waiter arrived is spared (a client
        keeps it busy and comes back); the waiting model is woken when the grace runs out. A model
        unused since the waiter came (one client alternating between two models) goes at once."""
        if any(m.state == "loading" for m in self.models.values()):
            return
        now = time.monotonic()
        oldest: dict[str, float] = {}
        for waiter in self._waiting:
            if not waiter.error:
                oldest.setdefault(waiter.model, waiter.since)
        for name, since in oldest.items():
            model = self.models[name]
            if model.state != "unloaded":
                continue
            patient = now - since >= self.settings.swap_grace_s
            victims = self._victims(model, None if patient else since)
            if victims is None:
                if not patient and self._victims(model, None) is not None:
                    self._wake_in(since + self.settings.swap_grace_s - now)
                return  # first come, first loaded: the oldest waits for busy models to drain
            for victim in victims:
                self._begin_unload(victim, "evicted")
            self._begin_load(model)
            return

    def _victims(self, model: Model, spare_used_since: float | None) -> list[Model] | None:
        """The idle models to evict so `model` fits (least recently used first), or None if it cannot
        fit until busy models finish. Models already unloading count as free; models that served a
        request after `spare_used_since` are spared."""
        free = self.settings.memory_budget_bytes - sum(
            m.need.bytes for m in self.models.values() if m.state in ("loading", "loaded")
        )
        victims: list[Model] = []
        idle = sorted(
            (
                m
                for m in self.models.values()
                if m.idle
                and not m.pinned
                and m is not model
                and (spare_used_since is None or m.last_used <= spare_used_since)
            ),
            key=lambda m: m.last_used,
        )
        for candidate in idle:
            if model.need.bytes <= free:
                break
            victims.append(candidate)
            free += candidate.need.bytes
        return victims if model.need.bytes <= free else None

    def _wake_in(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(max(0.0, delay), self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._notify()
        self._schedule()

    def _refuse_if_never_fits(self, model: Model) -> None:
        pinned = sum(m.need.bytes for m in self.models.values() if m.pinned and m is not model)
        room = self.settings.memory_budget_bytes - pinned
        if model.need.bytes > room:
            raise ApiError("invalid_request", model.need.too_big(model.spec.name, room, pinned > 0))

    def _begin_load(self, model: Model) -> None:
        model.state = "loading"
        model.transition = asyncio.get_running_loop().create_future()
        self._spawn(self._load(model))

    async def _load(self, model: Model) -> None:
        assert model.transition is not None
        done = model.transition
        unloading = [m.transition for m in self.models.values() if m.state == "unloading" and m.transition]
        await asyncio.gather(*unloading)  # their memory first
        started = time.monotonic()
        try:
            engine, resident = await asyncio.to_thread(self._start_engine, model.spec)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
            log.error("loading %s failed: %s", model.spec.name, reason)
            model.state, model.last_error, model.transition = "unloaded", reason, None
            for waiter in self._waiting:  # each answers with the reason; the next request tries again
                if waiter.model == model.spec.name:
                    waiter.error = reason
            self.metrics.model_loads.labels(model.spec.name, "failed").inc()
            done.set_result(None)
        else:
            model.engine, model.resident_bytes = engine, resident
            model.generation = Generation(
                engine, Admission(model.spec.slots, self.settings.queue_size), self.metrics
            )
            model.state, model.last_error, model.transition = "loaded", "", None
            for waiter in self._waiting:  # held before anything else can evict it
                if waiter.model == model.spec.name and not waiter.granted:
                    waiter.granted, model.held = True, model.held + 1
            model.loaded_once, model.load_s, model.last_used = (
                True,
                time.monotonic() - started,
                time.monotonic(),
            )
            self.metrics.model_loads.labels(model.spec.name, "ok").inc()
            estimate = model.need.estimate.total if model.need.estimate else 0
            log.info(
                "loaded %s with %s in %.2f s: estimate %s, measured %s",
                model.spec.name,
                engine.info.engine,
                model.load_s,
                _mb(estimate),
                _mb(resident),
            )
            done.set_result(None)
        self._notify()
        self._schedule()

    def _start_engine(self, spec: ModelSpec) -> tuple[Engine, int]:
        """On a thread: build and start the engine, and measure what it took."""
        engine = factory.create(spec, self.settings)
        before = memory.resident_bytes()
        engine.start()
        return engine, max(0, memory.resident_bytes() - before)

    def _begin_unload(self, model: Model, reason: UnloadReason) -> asyncio.Future[None] | None:
        """Take an idle model out of service now (no request can hold it from here on) and close its
        engine on a thread; the future is done once its memory is free."""
        if not model.idle:
            return None
        engine, model.engine, model.generation = model.engine, None, None
        model.state = "unloading"
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        model.transition = done
        self._spawn(self._close(model, engine, reason, done))
        return done

    async def _close(
        self, model: Model, engine: Engine | None, reason: UnloadReason, done: asyncio.Future[None]
    ) -> None:
        try:
            if engine is not None:
                await asyncio.to_thread(engine.close)
        finally:
            model.state, model.resident_bytes, model.draining, model.transition = "unloaded", 0, False, None
            done.set_result(None)
            self.metrics.model_unloads.labels(model.spec.name, reason).inc()
            log.info("unloaded %s (%s)", model.spec.name, reason)
            self._notify()
            self._schedule()

    async def _unload(self, model: Model, reason: UnloadReason) -> None:
        done = self._begin_unload(model, reason)
        if done is not None:
            await done

    def _changed(self) -> asyncio.Future[None]:
        if self._tick is None:
            self._tick = asyncio.get_running_loop().create_future()
        return self._tick

    def _notify(self) -> None:
        """Wake every waiter to look again."""
        tick, self._tick = self._tick, None
        if tick is not None and not tick.done():
            tick.set_result(None)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _size(spec: ModelSpec) -> int:
    """The model's files (0 when missing: its load fails and says so)."""
    if spec.path.is_file():
        return spec.path.stat().st_size
    return sum(p.stat().st_size for p in spec.path.glob("*.safetensors")) if spec.path.is_dir() else 0


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB"
