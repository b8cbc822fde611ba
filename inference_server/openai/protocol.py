"""Pydantic models of the OpenAI requests and responses this server speaks.

Refused with a 400 when set to anything but their neutral value (false, 0, empty, null), because the
server cannot honour them and a silently different answer is worse than an error: `logprobs`,
`top_logprobs`, `logit_bias`, `presence_penalty`, `frequency_penalty`, `audio`, `modalities` other
than `["text"]`, `web_search_options`, the legacy `functions` / `function_call` (use `tools` /
`tool_choice`), `n` > 1, and for /v1/completions `best_of` > 1 and `suffix`. Accepted and ignored,
since they do not change the answer: `user`, `metadata`, `store`, `service_tier`, `prediction`,
`reasoning_effort`, `prompt_cache_key`, `safety_identifier` and any field OpenAI does not define.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag
from pydantic_core import PydanticCustomError

from inference_server.durations import KeepAlive
from inference_server.limits import Seed, StopList, Unsupported


class ContentPart(BaseModel):
    type: str
    text: str = ""


class FunctionCall(BaseModel):
    name: str = Field(min_length=1)
    arguments: str = Field(description="a JSON object as text; empty means no arguments")


class ToolCall(BaseModel):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class FunctionDefinition(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    parameters: Any = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


def _choice_shape(value: Any) -> str:
    return "mode" if isinstance(value, str) else "named"


# Told apart first, so a bad named choice is reported as such, not as "not one of the modes".
ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("mode")] | Annotated[NamedToolChoice, Tag("named")],
    Discriminator(_choice_shape),
]


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchema(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    schema_: Any = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchema


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


def _text_only(modalities: list[str] | None) -> list[str] | None:
    if modalities and set(modalities) != {"text"}:
        raise PydanticCustomError("unsupported", 'only text output is supported here: ["text"]')
    return modalities


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopList | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: Seed | None = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per request")
    logprobs: Unsupported = None
    logit_bias: Unsupported = None
    presence_penalty: Unsupported = None
    frequency_penalty: Unsupported = None
    keep_alive: KeepAlive | None = Field(default=None, description="Ollama's: how long the model stays")


class ChatCompletionRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    # None: one call per turn, as llama-server (small models repeat a call until max_tokens otherwise)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    top_logprobs: Unsupported = None
    audio: Unsupported = None
    modalities: Annotated[list[str] | None, AfterValidator(_text_only)] = None
    web_search_options: Unsupported = None
    functions: Unsupported = None
    function_call: Unsupported = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1, description="OpenAI's default for completions")
    echo: bool = False
    best_of: int = Field(default=1, ge=1, le=1, description="one candidate per request")
    suffix: Unsupported = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ToolCallFunction(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


FinishReason = Literal["stop", "length", "tool_calls"]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionDelta(BaseModel):
    name: str | None = None
    arguments: str


class ToolCallDelta(BaseModel):
    """First chunk of a call: index, id, type, name and empty arguments; then index and arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's bound on the inputs of one request


def _embedding_inputs(value: Any) -> list[str] | list[list[int]]:
    """A string, strings, a token array or token arrays, as a list of texts or of token arrays."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return value
        if value and all(_is_id(item) for item in value):
            return [value]
        if all(isinstance(item, list) and all(_is_id(t) for t in item) for item in value):
            return value
    raise PydanticCustomError(
        "input_type", "must be a string, a list of strings, a token array or a list of token arrays"
    )


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class EmbeddingRequest(BaseModel):
    """`input` token arrays are this model's own token ids; `user` is accepted and ignored."""

    model: str
    input: Annotated[
        list[str] | list[list[int]],
        BeforeValidator(_embedding_inputs),
        Field(max_length=MAX_EMBEDDING_INPUTS),
    ]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None
    keep_alive: KeepAlive | None = Field(default=None, description="Ollama's: how long the model stays")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64: little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
