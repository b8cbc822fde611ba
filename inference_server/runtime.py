"""The per-app state routes share: settings, the model pool and metrics, and the one way a route
starts a generation or counts a prompt on the model a request names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from inference_server.engines.base import SamplingParams
from inference_server.generation import Prompt, Stream
from inference_server.metrics import Metrics
from inference_server.pool import Pool
from inference_server.responses.store import ResponseStore
from inference_server.settings import ServerSettings


@dataclass
class Runtime:
    settings: ServerSettings
    pool: Pool
    metrics: Metrics
    responses: ResponseStore = field(default_factory=ResponseStore)  # for previous_response_id

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
        held = await self.pool.hold(requested, keep_alive_s)
        try:
            stream = await held.generation.start(prompt, params, stops, plan)
        except BaseException:
            held.release()
            raise
        stream.on_close(held.release)
        return stream

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
