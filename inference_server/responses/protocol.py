"""Pydantic models of the Responses API requests and responses this server speaks.

Refused with a 400 naming the field, because the server cannot honour them and a silently different
answer is worse than an error: built-in tools (`web_search`, `file_search`, `computer_use`,
`code_interpreter`, `image_generation`, `mcp`, `local_shell`, `custom`, ...: only `function` tools
run here), input items of those tools and `item_reference`, `background: true`, `conversation`,
`prompt` (stored prompt templates), `top_logprobs`, `include` of `message.output_text.logprobs`,
`truncation: "auto"` and a `tool_choice` other than none / auto / required / a named function.
Accepted and ignored, since they do not change the answer: `reasoning` (the served models do not
reason; `reasoning_tokens` is 0), `reasoning` input items (dropped), every other `include` value
(they name outputs of tools that never run here, or reasoning that is never produced), `user`,
`metadata` (echoed), `service_tier`, `prompt_cache_key`, `safety_identifier`, `max_tool_calls`
(bounds built-in tools), `stream_options`, `text.verbosity` and any field OpenAI does not define.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag
from pydantic_core import PydanticCustomError

from inference_server.durations import KeepAlive
from inference_server.limits import Unsupported

Status = Literal["in_progress", "completed", "incomplete"]


class InputContent(BaseModel):
    """input_text / output_text / refusal carry text; images, files and audio become a marker."""

    type: str
    text: str = ""
    refusal: str = ""


class MessageItem(BaseModel):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputContent]


class FunctionCallItem(BaseModel):
    """A call the model made in an earlier turn, sent back as history."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = Field(description="a JSON object as text; empty means no arguments")


class FunctionCallOutputItem(BaseModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputContent]


class ReasoningItem(BaseModel):
    """An earlier turn's reasoning (another server's): the served models cannot read it, so dropped."""

    model_config = ConfigDict(extra="allow")
    type: Literal["reasoning"]


_ITEM_TYPES = {"message", "function_call", "function_call_output", "reasoning"}


def _item_type(value: Any) -> str | None:
    """An item without `type` is a message (OpenAI's "easy input message")."""
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _ITEM_TYPES else None


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(
        _item_type,
        custom_error_type="unsupported",
        custom_error_message="an input item is a message, function_call, function_call_output or "
        "reasoning item here (items of built-in tools and item_reference are not supported)",
    ),
]


def _input_shape(value: Any) -> str | None:
    return "text" if isinstance(value, str) else "items" if isinstance(value, list) else None


Input = Annotated[
    Annotated[str, Field(min_length=1), Tag("text")]
    | Annotated[list[InputItem], Field(min_length=1), Tag("items")],
    Discriminator(
        _input_shape,
        custom_error_type="invalid_type",
        custom_error_message="input must be a string or a list of input items",
    ),
]


class FunctionTool(BaseModel):
    """Responses' flat shape: no nested `function` object."""

    type: Literal["function"] = "function"
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: Any = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


def _tool_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "function" if kind == "function" else None


ToolParam = Annotated[
    Annotated[FunctionTool, Tag("function")],
    Discriminator(
        _tool_type,
        custom_error_type="unsupported",
        custom_error_message="only function tools run here; built-in tools (web_search, file_search, "
        "computer_use, code_interpreter, image_generation, mcp, ...) are not supported",
    ),
]


class NamedFunction(BaseModel):
    type: Literal["function"]
    name: str = Field(min_length=1)


def _choice_shape(value: Any) -> str | None:
    if isinstance(value, str):
        return "mode"
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return "function" if kind == "function" else None


ToolChoice = Annotated[
    Annotated[Literal["none", "auto", "required"], Tag("mode")] | Annotated[NamedFunction, Tag("function")],
    Discriminator(
        _choice_shape,
        custom_error_type="unsupported",
        custom_error_message='tool_choice is "none", "auto", "required" or {"type": "function", '
        '"name": ...} here (built-in tools and allowed_tools are not supported)',
    ),
]


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    """Responses' flat shape: name and schema sit beside `type`."""

    model_config = ConfigDict(populate_by_name=True)
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: Any = Field(default=None, alias="schema")
    strict: bool | None = None


Format = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class TextConfig(BaseModel):
    format: Format = Field(default_factory=lambda: TextFormat(type="text"))
    verbosity: str | None = None


class Reasoning(BaseModel):
    effort: str | None = None
    summary: str | None = None


def _no_logprobs(include: list[str] | None) -> list[str] | None:
    if include and "message.output_text.logprobs" in include:
        raise PydanticCustomError(
            "unsupported", "message.output_text.logprobs: logprobs are not supported here"
        )
    return include


def _not_background(background: bool | None) -> bool | None:
    if background:
        raise PydanticCustomError("unsupported", "background responses are not supported; leave it unset")
    return background


class ResponsesRequest(BaseModel):
    model: str
    input: Input
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    # None: one call per turn, as the chat endpoint (small models repeat a call until the budget ends)
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    reasoning: Reasoning | None = None
    include: Annotated[list[str] | None, AfterValidator(_no_logprobs)] = None
    metadata: dict[str, str] | None = None
    background: Annotated[bool | None, AfterValidator(_not_background)] = None
    truncation: Literal["disabled"] | None = None
    conversation: Unsupported = None
    prompt: Unsupported = None
    top_logprobs: Unsupported = None
    keep_alive: KeepAlive | None = Field(default=None, description="Ollama's: how long the model stays")


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Status
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Status


OutputItem = Annotated[OutputMessage | FunctionCall, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class Response(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: Reasoning = Field(default_factory=Reasoning)
    store: bool
    temperature: float
    text: TextConfig
    tool_choice: Literal["none", "auto", "required"] | NamedFunction
    tools: list[FunctionTool]
    top_p: float
    truncation: Literal["disabled"] = "disabled"
    usage: Usage | None
    metadata: dict[str, str] = Field(default_factory=dict)


class Deleted(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True
