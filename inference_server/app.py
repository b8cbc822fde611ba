"""`create_app(settings)`: the FastAPI app; its default model loads in the background at startup."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_server import errors, guard, streaming
from inference_server.admin.api_router import router as admin_router
from inference_server.anthropic.api_router import router as anthropic_router
from inference_server.auth import require_api_key
from inference_server.metrics import Metrics
from inference_server.ollama.api_router import router as ollama_router
from inference_server.openai.api_router import router as openai_router
from inference_server.pool import Pool
from inference_server.responses.api_router import router as responses_router
from inference_server.runtime import Runtime
from inference_server.settings import ServerSettings
from inference_server.ui import server as ui_server
from inference_server.ui import site as ui_site
from inference_server.ui.access import Access
from inference_server.ui.recent import History


def create_app(settings: ServerSettings) -> FastAPI:
    metrics = Metrics()
    pool = Pool(settings, metrics)
    runtime = Runtime(settings, pool, metrics)
    history = History(metrics.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = [asyncio.create_task(pool.run()), asyncio.create_task(history.run())]
        try:
            yield
        finally:
            for task in running:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await pool.close()

    app = FastAPI(
        title="llm-homelab inference server",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the key like every API route
    )
    app.state.runtime = runtime
    app.state.ui_history = history
    app.add_exception_handler(errors.ApiError, errors.on_api_error)
    app.add_exception_handler(RequestValidationError, errors.on_validation_error)
    app.add_exception_handler(HTTPException, errors.on_http_error)
    app.add_exception_handler(streaming.ClientGone, streaming.on_client_gone)
    app.add_exception_handler(Exception, errors.on_unexpected_error)

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_api_key)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.add_middleware(guard.RequestGuard, settings=settings)
    app.add_middleware(_CountRequests, metrics=metrics)
    app.include_router(admin_router)
    app.include_router(openai_router)
    app.include_router(anthropic_router)
    app.include_router(responses_router)
    app.include_router(ollama_router)
    access = Access(settings.api_key)
    ui_site.install(app, access, ui_server.NAV)
    app.include_router(ui_server.router(access))
    return app


class _CountRequests:
    """Requests by route and status; pure ASGI, so streaming and disconnects pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def remember_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
