"""Ollama's routes (`/api/*`): parse, hand to serving, respond; errors come back as `{"error": ...}`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel

from inference_server.auth import require_api_key
from inference_server.ollama import protocol as p
from inference_server.ollama.serving import VERSION, OllamaServing
from inference_server.runtime import Ready

router = APIRouter(prefix="/api", dependencies=[Depends(require_api_key)])


@router.get("/version")
async def version() -> p.Version:
    return p.Version(version=VERSION)


@router.get("/tags")
async def tags(state: Ready) -> p.Tags:
    return await OllamaServing(state).tags()


@router.get("/ps")
async def ps(state: Ready) -> p.Running:
    return await OllamaServing(state).ps()


@router.post("/show")
async def show(body: p.ModelRequest, state: Ready) -> p.Show:
    return await OllamaServing(state).show(body)


@router.post("/chat", response_model=None)
async def chat(request: Request, body: p.ChatRequest, state: Ready) -> Response | BaseModel:
    return await OllamaServing(state).chat(request, body)


@router.post("/generate", response_model=None)
async def generate(request: Request, body: p.GenerateRequest, state: Ready) -> Response | BaseModel:
    return await OllamaServing(state).generate(request, body)


@router.post("/embed")
async def embed(body: p.EmbedRequest, state: Ready) -> p.Embed:
    return await OllamaServing(state).embed(body)


@router.post("/embeddings")
async def embeddings(body: p.EmbeddingsRequest, state: Ready) -> p.Embeddings:
    return await OllamaServing(state).embeddings(body)


@router.post("/pull", response_model=None)
async def pull(body: p.PullRequest, state: Ready) -> Response | BaseModel:
    return await OllamaServing(state).pull(body)


@router.delete("/delete", response_model=None)
async def delete(body: p.ModelRequest, state: Ready) -> Response:
    return await OllamaServing(state).delete(body)
