"""Server-sent events shared by both APIs, and the client-disconnect handling around generation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


def sse(data: object, event: str = "") -> str:
    prefix = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"{prefix}data: {payload}\n\n"


HOLE = "\x00text\x00"  # a string no model produces, for `filler`


def filler(event: str) -> Callable[[str], str]:
    """Fill the one `HOLE` string of a serialized event with each token's text: per-token events then
    cost one json.dumps of the text, not a pydantic model and a dict dump, on a loop that shares the
    cores with decoding."""
    head, tail = event.split(json.dumps(HOLE), 1)
    return lambda text: head + json.dumps(text, ensure_ascii=False) + tail


class EventStream(StreamingResponse):
    """A streamed response (SSE unless told) that always runs `on_close` (frees the slot), even if
    the client left early."""

    def __init__(
        self,
        events: AsyncIterable[str],
        on_close: Callable[[], Awaitable[None]],
        media_type: str = "text/event-stream",  # Ollama's API streams application/x-ndjson
    ) -> None:
        super().__init__(events, media_type=media_type, headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


class ClientGone(Exception):
    """The client hung up before the answer was ready; nobody is left to read a response."""


async def on_client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run `work`, cancelling it if the client hangs up first (non-streaming requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGone
    return task.result()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
