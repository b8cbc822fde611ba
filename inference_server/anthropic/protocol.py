"""Pydantic models of the Anthropic Messages requests and responses (unknown fields ignored).

Blocks are kept loose (`type` plus whatever else came): tool_use, tool_result, image, document and
thinking blocks must be accepted, and are flattened to text for a model that has no tools.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Block(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str = ""
    name: str = ""
    input: Any = None
    content: str | list[Block] | None = None


class Message(BaseModel):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class CountTokensRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[Block] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stream: bool = False
    stop_sequences: list[str] = []
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


StopReason = Literal["end_turn", "max_tokens", "stop_sequence"]


class MessageResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class CountTokensResponse(BaseModel):
    input_tokens: int
