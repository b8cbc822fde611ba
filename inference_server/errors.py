"""API errors, rendered in the envelope of the API the client called.

Routes raise `ApiError` with a neutral kind; one table maps each kind to the status and type names
each API uses, so `/v1/messages` clients get Anthropic's shape, `/api/*` (Ollama's API) clients
Ollama's `{"error": "..."}`, and everyone else OpenAI's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

Kind = Literal[
    "invalid_request",
    "authentication",
    "forbidden",
    "not_found",
    "no_route",
    "busy",
    "too_large",
    "overloaded",
    "context_length",
    "server",
]


@dataclass(frozen=True)
class _Shape:
    status: int
    openai_type: str
    openai_code: str | None
    anthropic_type: str


_SHAPES: dict[Kind, _Shape] = {
    "invalid_request": _Shape(400, "invalid_request_error", None, "invalid_request_error"),
    "context_length": _Shape(
        400, "invalid_request_error", "context_length_exceeded", "invalid_request_error"
    ),
    "authentication": _Shape(401, "invalid_request_error", "invalid_api_key", "authentication_error"),
    "forbidden": _Shape(403, "invalid_request_error", None, "permission_error"),
    "not_found": _Shape(404, "invalid_request_error", "model_not_found", "not_found_error"),
    "no_route": _Shape(404, "invalid_request_error", None, "not_found_error"),
    "busy": _Shape(409, "invalid_request_error", "conflict", "invalid_request_error"),
    "too_large": _Shape(413, "invalid_request_error", "request_too_large", "request_too_large"),
    "overloaded": _Shape(503, "server_error", "overloaded", "overloaded_error"),
    "server": _Shape(500, "server_error", None, "api_error"),
}

_STATUS_KINDS: dict[int, Kind] = {
    401: "authentication",
    404: "no_route",
    405: "no_route",
    413: "too_large",
    503: "overloaded",
}

log = logging.getLogger("inference_server")


class ApiError(Exception):
    def __init__(self, kind: Kind, message: str, *, retry_after_s: int = 0) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        self.message = message
        self.retry_after_s = retry_after_s


class ContextLengthError(ApiError):
    """Each API's own words: Claude Code matches Anthropic's to trigger compaction."""

    def __init__(self, prompt_tokens: int, limit: int) -> None:
        super().__init__("context_length", f"prompt is too long: {prompt_tokens} tokens > {limit} maximum")
        self.openai_message = (
            f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the messages."
        )


def is_anthropic(request: Request) -> bool:
    return is_anthropic_path(request.url.path)


def is_anthropic_path(path: str) -> bool:
    return path.startswith("/v1/messages")


def is_ollama_path(path: str) -> bool:
    return path.startswith("/api/")


def status_of(kind: Kind) -> int:
    return _SHAPES[kind].status


def body(kind: Kind, message: str, *, anthropic: bool, ollama: bool = False) -> dict[str, object]:
    shape = _SHAPES[kind]
    if ollama:
        return {"error": message}
    if anthropic:
        return {"type": "error", "error": {"type": shape.anthropic_type, "message": message}}
    return {
        "error": {"message": message, "type": shape.openai_type, "param": None, "code": shape.openai_code}
    }


def body_for_path(kind: Kind, message: str, path: str) -> dict[str, object]:
    """The error in the envelope of the API `path` belongs to."""
    return body(kind, message, anthropic=is_anthropic_path(path), ollama=is_ollama_path(path))


def response(request: Request, error: ApiError) -> JSONResponse:
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else None
    anthropic = is_anthropic(request)
    request.app.state.runtime.metrics.errors.labels(error.kind).inc()
    message = (
        error.openai_message if isinstance(error, ContextLengthError) and not anthropic else error.message
    )
    return JSONResponse(
        body_for_path(error.kind, message, request.url.path),
        status_code=_SHAPES[error.kind].status,
        headers=headers,
    )


async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return response(request, exc)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """400 (not FastAPI's 422), naming the first bad field as both SDKs' users expect."""
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if p != "body")
    message = f"{where}: {first['msg']}" if where else str(first["msg"])
    return response(request, ApiError("invalid_request", message))


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    kind = _STATUS_KINDS.get(exc.status_code, "invalid_request")
    rendered = response(request, ApiError(kind, str(exc.detail)))
    rendered.status_code = exc.status_code
    return rendered


async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug is still an answer in the API's own envelope (and a traceback in the log)."""
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return response(request, ApiError("server", f"internal error: {type(exc).__name__}: see the server log"))
