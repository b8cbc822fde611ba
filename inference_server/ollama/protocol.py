"""Pydantic models of the Ollama API requests and responses this server speaks (`/api/*`).

Options honoured: temperature, top_p, seed, num_predict (-1 and -2: until the context is full), stop;
num_ctx is read but the served context applies (a loaded model's context is fixed; Ollama would reload
the model with the new size). Other options (top_k, repeat_penalty, num_gpu, ...) and `think` are
accepted and ignored, as Ollama ignores options a model does not use. Refused with a 400 because the
answer would silently differ: /api/generate's `suffix`, `template` and `context`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inference_server.durations import KeepAlive
from inference_server.limits import Seed, StopList, Unsupported


class Options(BaseModel):
    model_config = ConfigDict(extra="allow")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: Seed | None = None
    num_predict: int | None = Field(default=None, ge=-2, description="-1, -2 (and 0): no limit")
    num_ctx: int | None = Field(default=None, ge=1)
    stop: StopList | None = None


class FunctionCall(BaseModel):
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolCall(BaseModel):
    function: FunctionCall


class Message(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = Field(default=None, description="tool turns: the tool that answered")
    thinking: str | None = None


class FunctionDefinition(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    parameters: Any = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


Format = Literal["", "json"] | dict[str, Any]


class _Generating(BaseModel):
    model: str = Field(min_length=1)
    stream: bool = True
    format: Format | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None
    think: bool | str | None = None


class ChatRequest(_Generating):
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = None


class GenerateRequest(_Generating):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    images: list[str] | None = None
    suffix: Unsupported = None
    template: Unsupported = None
    context: Unsupported = None


class EmbedRequest(BaseModel):
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class EmbeddingsRequest(BaseModel):
    """The older /api/embeddings: one prompt, one vector."""

    model: str = Field(min_length=1)
    prompt: str
    options: Options | None = None
    keep_alive: KeepAlive | None = None


class ModelRequest(BaseModel):
    """/api/show, /api/delete; `name` is the older spelling of `model`."""

    model: str = ""
    name: str = ""
    verbose: bool = False

    @property
    def requested(self) -> str:
        return self.model or self.name


class PullRequest(ModelRequest):
    stream: bool = True
    insecure: bool = False


class Details(BaseModel):
    parent_model: str = ""
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class ListedModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: Details


class Tags(BaseModel):
    models: list[ListedModel]


class RunningModel(BaseModel):
    name: str
    model: str
    size: int
    digest: str
    details: Details
    expires_at: str
    size_vram: int = 0
    context_length: int


class Running(BaseModel):
    models: list[RunningModel]


class Show(BaseModel):
    modelfile: str
    parameters: str
    template: str
    details: Details
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class Version(BaseModel):
    version: str


class ToolCallOut(BaseModel):
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    tool_calls: list[ToolCallOut] | None = None


class Done(BaseModel):
    """The counts and durations (nanoseconds) of a finished answer."""

    done: Literal[True] = True
    done_reason: str
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


class ChatChunk(BaseModel):
    model: str
    created_at: str
    message: AssistantMessage
    done: bool = False


class ChatDone(Done):
    model: str
    created_at: str
    message: AssistantMessage


class GenerateChunk(BaseModel):
    model: str
    created_at: str
    response: str
    done: bool = False


class GenerateDone(Done):
    model: str
    created_at: str
    response: str


class Embed(BaseModel):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class Embeddings(BaseModel):
    embedding: list[float]
