"""Everything the server needs, passed in whole by the task that starts it (no defaults here).

The `server` tasks build these from invoke.yaml and flags and hand them over as a JSON file, so the
server never reads the project's configuration itself and tests build their own.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EngineName = Literal["auto", "llama_cpp", "mlx"]
ModelFormat = Literal["gguf", "mlx", "safetensors"]
ModelKind = Literal["chat", "embedding"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Frozen):
    """One model the server may serve; each loaded model gets its own engine with these."""

    name: str = Field(min_length=1, description="the id clients ask for and /v1/models lists")
    path: Path = Field(description="a GGUF file or an MLX model directory")
    format: ModelFormat
    # The one default here: settings written before models had a kind are all chat models.
    kind: ModelKind = Field(default="chat", description="an embedding model only embeds; chat does both")
    context_size: int = Field(ge=256)
    slots: int = Field(ge=1, description="requests generating at once")
    keep_alive_s: float = Field(ge=-1, description="idle seconds before unloading; -1 never, 0 at once")
    pinned: bool = Field(description="resident whatever happens: never evicted or expired")


class Alias(_Frozen):
    pattern: str = Field(min_length=1, description="an fnmatch pattern of requested names")
    model: str = Field(description="the ModelSpec name it routes to")

    @property
    def is_name(self) -> bool:
        """A plain name (listed in /v1/models) rather than a pattern (only matched)."""
        return not any(ch in self.pattern for ch in "*?[")


class ServerSettings(_Frozen):
    models: list[ModelSpec] = Field(min_length=1)
    default_model: str = Field(description="loaded at start; /health follows it")
    model_aliases: list[Alias] = Field(description="other names for models, first match wins")
    engine: EngineName
    host: str
    port: int = Field(ge=0, le=65535)
    api_key: str
    queue_size: int = Field(ge=0, description="requests waiting, per model and for loads; beyond, 503")
    prefix_cache_bytes: int = Field(ge=0, description="per loaded model")
    threads: int = Field(ge=0, description="0 = the engine decides")
    memory_budget_bytes: int = Field(gt=0, description="what the loaded models may use together")
    swap_grace_s: float = Field(
        ge=0, description="how long a model that must wait for memory lets a loaded one keep serving"
    )
    strip_billing_header: bool = Field(description="drop x-anthropic-billing-header lines from prompts")
    allowed_hosts: list[str] = Field(
        description="Host header names accepted while no api_key is set (DNS-rebinding guard)"
    )
    stop_grace_s: float = Field(gt=0)
    ui_prompt_text: bool = Field(description="the dashboard's recent requests show each prompt's text")
    rpc_servers: list[str] = Field(
        description="host:port of llama.cpp rpc-servers (the local ends of SSH tunnels) that take a "
        "share of each GGUF model's layers; loopback only"
    )
    rpc_watch: str = Field(
        description="unix socket of the tunnel keeper, which closes it when a helper is lost ('' none)"
    )
    manage_command: list[str] = Field(
        description="runs one of the project's tasks (Ollama's /api/pull and /api/delete): the command "
        "line before the task's name, e.g. [python, -m, invoke, --search-root, CHECKOUT]"
    )

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if not self.api_key and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} without an API key: set server.api_key "
                "(or bind 127.0.0.1)"
            )
        for endpoint in self.rpc_servers:
            host, _, port = endpoint.rpartition(":")
            if not (is_loopback(host) and port.isdigit()):
                raise ValueError(f"rpc_servers: {endpoint} is not a loopback host:port (tunnel it over SSH)")
        names = [spec.name for spec in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"models: a name appears twice in {names}")
        if self.default_model not in names:
            raise ValueError(f"default_model '{self.default_model}' is not one of the models {names}")
        for alias in self.model_aliases:
            if alias.model not in names:
                raise ValueError(f"alias '{alias.pattern}' routes to '{alias.model}', not one of {names}")
        return self

    @property
    def default(self) -> ModelSpec:
        return self.spec(self.default_model)

    def spec(self, name: str) -> ModelSpec:
        return next(spec for spec in self.models if spec.name == name)

    def route(self, requested: str) -> ModelSpec | None:
        """The model a request's name picks: its own name, else the first alias that matches."""
        for spec in self.models:
            if spec.name == requested:
                return spec
        for alias in self.model_aliases:
            if fnmatch.fnmatchcase(requested, alias.pattern):
                return self.spec(alias.model)
        return None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(path: Path) -> ServerSettings:
    return ServerSettings.model_validate_json(path.read_text())
