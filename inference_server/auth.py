"""API key check: `x-api-key` (Anthropic clients) or `Authorization: Bearer` (OpenAI clients)."""

from __future__ import annotations

import hmac

from fastapi import Request

from inference_server.errors import ApiError


def presented_key(request: Request) -> str:
    if key := request.headers.get("x-api-key"):
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def require_api_key(request: Request) -> None:
    """A FastAPI dependency; no key configured means an open (loopback-only) server."""
    expected: str = request.app.state.runtime.settings.api_key
    if not expected:
        return
    key = presented_key(request)
    if not key:
        raise ApiError("authentication", "missing API key: send it as x-api-key or Authorization: Bearer")
    if not hmac.compare_digest(key.encode(), expected.encode()):
        raise ApiError("authentication", "invalid API key")
