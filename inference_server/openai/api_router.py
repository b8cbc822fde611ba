"""OpenAI routes: parse, hand to serving, respond."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from inference_server.auth import require_api_key
from inference_server.openai import protocol as p
from inference_server.openai.serving import OpenAIServing
from inference_server.runtime import Ready
from inference_server.streaming import EventStream

router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    request: Request, body: p.ChatCompletionRequest, state: Ready
) -> p.ChatCompletion | EventStream:
    return await OpenAIServing(state).chat(request, body)


@router.post("/completions", response_model=None)
async def completions(
    request: Request, body: p.CompletionRequest, state: Ready
) -> p.Completion | EventStream:
    return await OpenAIServing(state).complete(request, body)


@router.post("/embeddings")
async def embeddings(body: p.EmbeddingRequest, state: Ready) -> p.EmbeddingList:
    return await OpenAIServing(state).embed(body)
