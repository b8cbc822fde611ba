"""Pydantic models of the Anthropic Messages requests and responses.

Accepted and ignored, because none of them changes what a local model can answer (Claude Code sends
most of them): `thinking`, `output_config.effort`, `context_management`, `metadata`, `service_tier`,
`cache_control` on any block or tool, a tool's `defer_loading`, `input_examples` and other extra
tool fields, the `anthropic-beta` header and `?beta=true` with any beta, and any field Anthropic
does not define. Tools whose `type` names a server or Anthropic-defined tool (`web_search_…`,
`bash_…`, `text_editor_…`, …) are left out with a log line: the model can call only custom tools.
Refused with a 400: `top_k` (the engines sample with temperature and top_p only).

Blocks are kept loose (`type` plus whatever else came), since images, documents, thinking and server
tool blocks must be accepted in a history; tool_use and tool_result blocks are checked for the fields
a call and its result need.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from inference_server.durations import KeepAlive
from inference_server.limits import StopList, Unsupported


def _shape(value: Any) -> str:
    return "text" if isinstance(value, str) else "blocks"


# A string or blocks, told apart first, so an error names the blocks' problem, not "not a string".
Content = Annotated[
    Annotated[str, Tag("text")] | Annotated[list["Block"], Tag("blocks")], Discriminator(_shape)
]


class Block(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    input: Any = None
    tool_use_id: str = ""
    content: Content | None = None
    is_error: bool = False

    @model_validator(mode="after")
    def _tool_fields(self) -> Block:
        if self.type == "tool_use" and not (self.id and self.name and isinstance(self.input, dict)):
            raise PydanticCustomError("tool_use", "a tool_use block needs an id, a name and an input object")
        if self.type == "tool_result" and not self.tool_use_id:
            raise PydanticCustomError("tool_result", "a tool_result block needs the tool_use_id it answers")
        return self


class Message(BaseModel):
    role: Literal["user", "assistant", "system"]
    content: Content


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=128)
    type: str | None = None
    description: str = ""
    input_schema: Any = None
    strict: bool | None = None

    @property
    def custom(self) -> bool:
        return self.type in (None, "custom")

    @model_validator(mode="after")
    def _schema(self) -> Tool:
        if self.custom and self.input_schema is None:
            raise PydanticCustomError("input_schema", "a custom tool needs an input_schema")
        return self


class AutoChoice(BaseModel):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None  # None: one call (see serving.tool_choice)


class AnyChoice(BaseModel):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None  # None: one call (see serving.tool_choice)


class NamedChoice(BaseModel):
    type: Literal["tool"]
    name: str
    disable_parallel_tool_use: bool | None = None  # None: one call (see serving.tool_choice)


class NoChoice(BaseModel):
    type: Literal["none"]


ToolChoice = Annotated[AutoChoice | AnyChoice | NamedChoice | NoChoice, Field(discriminator="type")]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    type: Literal["json_schema"]
    schema_: Any = Field(alias="schema")


class OutputConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: JsonSchemaFormat | None = None


class CountTokensRequest(BaseModel):
    model: str
    messages: list[Message] = Field(min_length=1)
    system: Content | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    output_config: OutputConfig | None = None
    output_format: JsonSchemaFormat | None = Field(default=None, description="the older beta spelling")


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    keep_alive: KeepAlive | None = Field(default=None, description="Ollama's: how long the model stays")
    stream: bool = False
    stop_sequences: StopList = []
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: Unsupported = None


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlock | ToolUseBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class CountTokensResponse(BaseModel):
    input_tokens: int
