"""GET /health (public), /metrics, /v1/models (one list both SDKs parse)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_server.auth import require_api_key
from inference_server.runtime import Runtime

router = APIRouter()
_STARTED = int(time.time())


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 only while the engine answers: 503 while loading, after a failed load, or if it died."""
    state: Runtime = request.app.state.runtime
    settings = state.settings
    if state.ready():
        info = state.engine.info
        return JSONResponse(
            {"status": "ok", "model": info.model, "engine": info.engine, "context_size": info.context_size}
        )
    if state.load_error:
        status, detail = "error", f"loading failed: {state.load_error}"
    elif not state.loaded.is_set():
        status, detail = "loading", f"loading {settings.model_name}"
    else:
        status, detail = "error", "the engine worker stopped: restart the server (see its log)"
    return JSONResponse({"status": status, "detail": detail}, status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics", dependencies=[Depends(require_api_key)])
async def metrics(request: Request) -> Response:
    registry = request.app.state.runtime.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", dependencies=[Depends(require_api_key)])
async def models(request: Request) -> dict[str, object]:
    """OpenAI's list shape with Anthropic's fields added (Claude Code keeps ids starting `claude`)."""
    state: Runtime = request.app.state.runtime
    names = state.listed_names()
    data = [_model(name) for name in names]
    return {"object": "list", "data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]}


@router.get("/v1/models/{name:path}", dependencies=[Depends(require_api_key)])
async def model(request: Request, name: str) -> dict[str, object]:
    """One model by any name the server answers to (an alias pattern's match included), else 404."""
    state: Runtime = request.app.state.runtime
    state.check_model(name)
    return _model(name)


def _model(name: str) -> dict[str, object]:
    return {
        "id": name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "llm-homelab",
        "type": "model",
        "display_name": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_STARTED)),
    }
