"""Everything the server needs, passed in whole by the task that starts it (no defaults here).

The `server` tasks build these from invoke.yaml and flags and hand them over as a JSON file, so the
server never reads the project's configuration itself and tests build their own.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EngineName = Literal["auto", "llama_cpp", "mlx"]


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field(min_length=1, description="the id clients ask for and /v1/models lists")
    model_path: Path = Field(description="a GGUF file or an MLX model directory")
    model_format: Literal["gguf", "mlx", "safetensors"]
    engine: EngineName
    host: str
    port: int = Field(ge=0, le=65535)
    api_key: str
    context_size: int = Field(ge=256)
    slots: int = Field(ge=1, description="requests generating at once")
    queue_size: int = Field(ge=0, description="requests waiting for a slot; beyond it, 503")
    prefix_cache_bytes: int = Field(ge=0)
    threads: int = Field(ge=0, description="0 = the engine decides")
    model_aliases: list[str] = Field(description="other names (fnmatch patterns) for the served model")
    strip_billing_header: bool = Field(description="drop x-anthropic-billing-header lines from prompts")
    allowed_hosts: list[str] = Field(
        description="Host header names accepted while no api_key is set (DNS-rebinding guard)"
    )
    stop_grace_s: float = Field(gt=0)

    @model_validator(mode="after")
    def _key_required_off_loopback(self) -> ServerSettings:
        if not self.api_key and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} without an API key: set server.api_key "
                "(or bind 127.0.0.1)"
            )
        return self

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
