"""GET /health (public), /metrics, /v1/models (one list both SDKs parse), and /admin/models: the
models this server may serve, which are loaded, and loading, pinning and unloading them."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_server.auth import require_api_key
from inference_server.pool import Model
from inference_server.runtime import Ready, Runtime

router = APIRouter()
admin = APIRouter(prefix="/admin/models", dependencies=[Depends(require_api_key)])
_STARTED = int(time.time())


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 while the default model can serve; 503 while it first loads, after a failed load, or once
    its engine died."""
    state: Runtime = request.app.state.runtime
    status, detail = state.pool.health()
    default = state.pool.default
    if status == "ok":
        loaded = [name for name, m in state.pool.models.items() if m.state == "loaded"]
        info = default.engine.info if default.engine is not None else None
        return JSONResponse(
            {
                "status": "ok",
                "model": default.spec.name,
                "engine": info.engine if info else state.settings.engine,
                "context_size": info.context_size if info else default.spec.context_size,
                "loaded": loaded,
            }
        )
    return JSONResponse({"status": status, "detail": detail}, status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics", dependencies=[Depends(require_api_key)])
async def metrics(request: Request) -> Response:
    registry = request.app.state.runtime.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", dependencies=[Depends(require_api_key)])
async def models(state: Ready) -> dict[str, object]:
    """OpenAI's list shape with Anthropic's fields added (Claude Code keeps ids starting `claude`) and
    each model's state; aliases that are plain names are listed under their own ids."""
    names = state.pool.listed_names()
    data = [_listed(state, name) for name in names]
    return {"object": "list", "data": data, "has_more": False, "first_id": names[0], "last_id": names[-1]}


@router.get("/v1/models/{name:path}", dependencies=[Depends(require_api_key)])
async def model(state: Ready, name: str) -> dict[str, object]:
    """One model by any name the server answers to (an alias pattern's match included), else 404."""
    state.pool.route(name)
    return _listed(state, name)


@admin.get("")
async def admin_models(state: Ready) -> dict[str, object]:
    pool = state.pool
    return {
        "memory_budget_bytes": state.settings.memory_budget_bytes,
        "used_bytes": pool.used_bytes(),
        "models": [_row(m, name == state.settings.default_model) for name, m in pool.models.items()],
    }


@admin.post("/{name:path}/load")
async def load(state: Ready, name: str, pin: bool = False) -> dict[str, object]:
    """Load now (evicting idle models if need be) and, with `?pin=true`, keep it whatever happens."""
    loaded = await state.pool.load(name, pin=pin)
    return _row(loaded, loaded.spec.name == state.settings.default_model)


@admin.post("/{name:path}/unload")
async def unload(state: Ready, name: str) -> dict[str, object]:
    """Unpin and unload; with requests in flight it unloads when the last one ends."""
    unloaded = await state.pool.unload(name)
    return _row(unloaded, unloaded.spec.name == state.settings.default_model)


router.include_router(admin)


def _row(model: Model, default: bool) -> dict[str, object]:
    now = time.monotonic()
    estimate = model.need.estimate
    return {
        "name": model.spec.name,
        "default": default,
        "engine": model.engine.info.engine if model.engine is not None else "",
        "state": model.state,
        "pinned": model.pinned,
        "context_size": model.engine.info.context_size
        if model.engine is not None
        else model.spec.context_size,
        "slots": model.spec.slots,
        "active_requests": model.held,
        "footprint_bytes": model.need.bytes,
        "prefix_cache_bytes": model.need.prefix_cache,
        "embedding_context_bytes": model.need.embedding,
        "estimate": {
            "weights_bytes": estimate.weights,
            "kv_cache_bytes": estimate.kv_cache,
            "compute_bytes": estimate.compute,
            "total_bytes": estimate.total,
        }
        if estimate
        else None,
        "resident_bytes": model.resident_bytes,
        # "CPU: 10 layers 30 MiB, RPC0: 10 layers 25 MiB, ..." for a model split over RPC helpers
        "devices": model.engine.info.extra.get("devices", "") if model.engine is not None else "",
        "load_s": round(model.load_s, 3),
        "keep_alive_s": model.keep_alive_s,
        "idle_s": round(now - model.last_used, 1) if model.idle else None,
        "expires_in_s": None if (left := model.expires_in(now)) is None else round(left, 1),
        "last_error": model.last_error,
    }


def _listed(state: Runtime, name: str) -> dict[str, object]:
    routed = state.pool.route(name)
    return {
        "id": name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "llm-homelab",
        "type": "model",
        "display_name": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_STARTED)),
        "state": routed.state,
        "served_by": routed.spec.name,
    }
