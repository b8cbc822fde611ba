"""The per-app state routes share: settings, the model pool and metrics, and the one way a route
starts a generation or counts a prompt on the model a request names."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from inference_server.engines.base import SamplingParams
from inference_server.errors import ApiError
from inference_server.generation import ChatPrompt, Prompt, Stream
from inference_server.metrics import Metrics
from inference_server.pool import Pool
from inference_server.responses.store import ResponseStore
from inference_server.settings import ServerSettings
from inference_server.ui.recent import RequestLog, RequestRecord
from inference_server.vectors import unit


@dataclass(frozen=True)
class Embedded:
    vectors: list[list[float]]  # one per input, in order, unit length
    prompt_tokens: int


@dataclass
class Runtime:
    settings: ServerSettings
    pool: Pool
    metrics: Metrics
    responses: ResponseStore = field(default_factory=ResponseStore)  # for previous_response_id
    recent: RequestLog = field(default_factory=RequestLog)  # the dashboard's recent requests

    async def start(
        self,
        requested: str,
        prompt: Prompt,
        params: SamplingParams,
        stops: Sequence[str],
        plan: Any = None,
        keep_alive_s: float | None = None,
    ) -> Stream:
        """A started generation on the requested model, loading it first if need be; the model stays
        held (never evicted) until the stream closes."""
        if self.pool.route(requested).spec.kind == "embedding":
            raise ApiError(
                "invalid_request",
                f"model '{requested}' is an embedding model: it embeds text but does not generate any",
            )
        began = time.monotonic()
        try:
            held = await self.pool.hold(requested, keep_alive_s)
            try:
                stream = await held.generation.start(prompt, params, stops, plan)
            except BaseException:
                held.release()
                raise
        except ApiError as exc:
            self._record(requested, prompt, began, exc.kind)
            raise
        stream.on_close(held.release)
        stream.on_close(
            lambda: self._record(
                requested,
                prompt,
                began,
                stream.outcome.finish_reason if stream.outcome else "cancelled",
                stream.prompt_tokens,
                stream.completion_tokens,
            )
        )
        return stream

    def _record(
        self, model: str, prompt: Prompt, began: float, status: str, tokens_in: int = 0, tokens_out: int = 0
    ) -> None:
        """One line of the dashboard's recent requests; the prompt's last message only if asked for."""
        if not self.settings.ui_prompt_text:
            text = ""
        elif isinstance(prompt, ChatPrompt):
            text = prompt.messages[-1].content if prompt.messages else ""
        else:
            text = prompt
        took = round(time.monotonic() - began, 3)
        self.recent.add(RequestRecord(time.time(), model, tokens_in, tokens_out, took, status, text[:500]))

    async def embed(
        self, requested: str, inputs: list[str] | list[list[int]], keep_alive_s: float | None = None
    ) -> Embedded:
        """One unit-length vector per input, computed as one batch on the requested model (a chat
        model mean-pools); the model stays held until they are computed."""
        held = await self.pool.hold(requested, keep_alive_s)
        try:
            vectors, tokens = await held.generation.embed(inputs)
        finally:
            held.release()
        return Embedded([unit(vector) for vector in vectors], tokens)

    async def count_tokens(self, requested: str, prompt: Prompt) -> int:
        held = await self.pool.hold(requested)
        try:
            return await held.generation.count_tokens(prompt)
        finally:
            held.release(served=False)


def runtime(request: Request) -> Runtime:
    state: Runtime = request.app.state.runtime
    return state


Ready = Annotated[Runtime, Depends(runtime)]
