"""Anthropic routes (`?beta=true` and `anthropic-beta` headers are accepted and ignored)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from inference_server.anthropic import protocol as p
from inference_server.anthropic.serving import AnthropicServing
from inference_server.auth import require_api_key
from inference_server.runtime import Ready
from inference_server.streaming import EventStream

router = APIRouter(prefix="/v1/messages", dependencies=[Depends(require_api_key)])


@router.post("", response_model=None)
async def messages(
    request: Request, body: p.MessagesRequest, state: Ready
) -> p.MessageResponse | EventStream:
    return await AnthropicServing(state).messages(request, body)


@router.post("/count_tokens")
async def count_tokens(body: p.CountTokensRequest, state: Ready) -> p.CountTokensResponse:
    return await AnthropicServing(state).count_tokens(body)
