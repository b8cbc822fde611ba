"""The small interface between the HTTP layer and an engine.

The HTTP layer renders prompts and relays chunks; it never imports a backend library. An engine owns
one long-lived worker thread that does every decode (llama.cpp gives each decoding thread its own
OpenMP pool, so a second decoding thread costs two thirds of the speed); the event loop only submits
requests and awaits chunks. Several streams may be in flight at once: an engine may batch them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class ToolCall:
    """A call in the history (an assistant turn) or one the model made."""

    id: str
    name: str
    arguments: dict[str, Any]  # the parsed JSON object


@dataclass(frozen=True)
class ToolSpec:
    """A declared tool, API-neutral: both APIs' tool definitions become one of these."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments (an object)


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns
    tool_call_id: str = ""  # tool turns: the call this answers
    name: str = ""  # tool turns: the tool's name


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Chunk:
    """A piece of generated text; the last chunk of a stream carries finish_reason and counts."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class EngineInfo:
    model: str
    engine: str
    context_size: int
    extra: dict[str, str] = field(default_factory=dict)


class EngineError(Exception):
    """The engine cannot serve: not loaded, worker dead, or prompt too long."""


class PromptTooLong(EngineError):
    def __init__(self, prompt_tokens: int, limit: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        super().__init__(f"prompt is too long: {prompt_tokens} tokens > {limit} maximum")


class Engine(Protocol):
    info: EngineInfo

    def start(self) -> None:
        """Load the model and start the worker thread (blocking; call off the event loop)."""

    def healthy(self) -> bool:
        """True while the worker thread is alive and the model loaded."""

    def tokenize(self, text: str) -> list[int]: ...

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """The model's own chat template applied, ready for generation."""

    def generate(self, prompt: str, params: SamplingParams) -> AsyncIterator[Chunk]:
        """Stream chunks; closing the iterator early cancels the request and frees its slot."""

    def close(self) -> None:
        """Stop the worker; requests in flight end with finish_reason 'cancelled'."""
