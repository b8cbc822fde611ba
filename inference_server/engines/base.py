"""The small interface between the HTTP layer and an engine.

The HTTP layer renders and tokenises a prompt once (off the event loop) and hands the engine token
ids; it never imports a backend library. An engine owns one long-lived worker thread that does every
decode (llama.cpp gives each decoding thread its own OpenMP pool, so a second decoding thread costs
two thirds of the speed); the event loop only submits requests and awaits chunks. Several streams may
be in flight at once: an engine may batch them.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    """`max_tokens` 0 means as many as the context has room for."""

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
    error: str = ""  # why, when finish_reason is "error"


@dataclass(frozen=True)
class EngineInfo:
    model: str
    engine: str
    context_size: int  # the longest sequence one request may use, prompt and answer together
    extra: dict[str, str] = field(default_factory=dict)


class EngineError(Exception):
    """The engine cannot serve: not loaded, worker dead, or prompt too long."""


class TemplateRefused(EngineError):
    """The model's chat template refused these messages (`raise_exception`): the client's to fix."""


class PromptTooLong(EngineError):
    def __init__(self, prompt_tokens: int, limit: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        super().__init__(f"prompt is too long: {prompt_tokens} tokens > {limit} maximum")


class InputRefused(EngineError):
    """The input cannot be computed as sent (a token id outside the vocabulary): the client's to fix."""


def check_embeddable(batch: Sequence[Sequence[int]], limit: int, n_vocab: int) -> None:
    """What both engines refuse before embedding: a sequence too long, empty, or with foreign ids."""
    for tokens in batch:
        if len(tokens) > limit:
            raise PromptTooLong(len(tokens), limit)
        if not tokens:
            raise InputRefused("an empty sequence has no embedding")
        outside = [t for t in tokens if not 0 <= t < n_vocab]
        if outside:
            raise InputRefused(f"token id {outside[0]} is not in the model's vocabulary (0 to {n_vocab - 1})")


class TokenConstraint(Protocol):
    """Which tokens may come next, for one sequence; only the engine's worker thread calls it."""

    def fill_mask(self, bitmask: Any) -> bool:
        """Write the allowed next tokens into `bitmask` (int32 words, bit i of the row = token i);
        False when nothing is constrained right now (a lazy grammar before its trigger)."""

    def accept(self, token: int) -> None:
        """Every sampled token, constrained or not."""

    def stopped(self) -> bool:
        """The grammar is complete and nothing may follow: the sequence ends here."""


class Engine(Protocol):
    info: EngineInfo

    @property
    def template_source(self) -> str | None:
        """The model's own chat template, which says how it writes tool calls (None: it has none)."""

    def start(self) -> None:
        """Load the model and start the worker thread (blocking; call off the event loop)."""

    def healthy(self) -> bool:
        """True while the worker thread is alive and the model loaded."""

    def tokenize(self, text: str) -> list[int]:
        """A raw prompt's ids, special tokens parsed (what /v1/completions sends is trusted)."""

    def chat_tokens(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> list[int]:
        """The chat template applied and tokenised; special tokens are parsed only in the template's
        own text, never inside message content (no role injection). Blocking: call off the loop."""

    def render_chat(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        """The chat template applied, as text (for /v1/completions-style debugging and tests)."""

    def grammar_tokenizer(self) -> Any:
        """The tokenizer constraints are compiled against (built once)."""

    def generate(
        self, tokens: list[int], params: SamplingParams, constraint: TokenConstraint | None = None
    ) -> AsyncIterator[Chunk]:
        """An async generator: every error (PromptTooLong included) surfaces at the first `anext`;
        closing it early cancels the request and frees its slot."""

    async def embed(self, batch: list[list[int]]) -> list[list[float]]:
        """One vector per sequence, pooled as the model says (mean for a decoder LM that says nothing)
        and not normalised; the whole batch in as few passes as the embedding context takes.
        PromptTooLong names the limit of one sequence; InputRefused an id outside the vocabulary."""

    def close(self) -> None:
        """Stop the worker; requests in flight end with finish_reason 'cancelled'."""


@dataclass(eq=False)
class EmbedJob:
    """A batch an engine's worker thread embeds; it answers on the caller's event loop."""

    batch: list[list[int]]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[list[list[float]]]

    def answer(self, vectors: list[list[float]] | None, error: BaseException | None = None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self.loop.call_soon_threadsafe(self._settle, vectors, error)

    def _settle(self, vectors: list[list[float]] | None, error: BaseException | None) -> None:
        if self.done.done():
            return
        if error is not None:
            self.done.set_exception(error)
        else:
            self.done.set_result(vectors or [])
