"""Responses routes: parse, hand to serving, respond."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from inference_server.auth import require_api_key
from inference_server.responses import protocol as p
from inference_server.responses.serving import ResponsesServing
from inference_server.runtime import Ready
from inference_server.streaming import EventStream

router = APIRouter(prefix="/v1/responses", dependencies=[Depends(require_api_key)])


@router.post("", response_model=None)
async def create(request: Request, body: p.ResponsesRequest, state: Ready) -> p.Response | EventStream:
    return await ResponsesServing(state).create(request, body)


@router.get("/{response_id}")
async def retrieve(response_id: str, state: Ready) -> p.Response:
    return ResponsesServing(state).retrieve(response_id)


@router.delete("/{response_id}")
async def delete(response_id: str, state: Ready) -> p.Deleted:
    return ResponsesServing(state).delete(response_id)
