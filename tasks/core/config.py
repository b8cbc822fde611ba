"""Typed, validated view of invoke.yaml.

invoke.yaml holds every setting with its default; these models hold none, so a key missing from
the merged configuration is an error that names it rather than a silent second default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from inference_server import durations
from tasks.core.config_file import (
    CONFIG_FILE,
    PROJECT_ROOT,  # noqa: F401 (re-exported: config.PROJECT_ROOT)
    expand_path,
    read_yaml,
    sections,
)
from tasks.core.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelsSettings(Section):
    catalog: Path
    cache_dir: Path
    hub_endpoint: str
    hub_token: str
    free_space_margin_mb: int = Field(ge=0)
    converted_dir: Path

    @property
    def free_space_margin_bytes(self) -> int:
        """What a download or a copy leaves free on the cache's disk."""
        return self.free_space_margin_mb * 1_000_000

    _paths = field_validator("catalog", "cache_dir", "converted_dir", mode="before")(
        lambda v: expand_path(str(v))
    )


class ServerConfig(Section):
    """invoke.yaml's `server:` section; the fields it shares with inference_server's ServerSettings are
    handed over by name (tasks.core.server.served_settings)."""

    model: str
    models: list[str]
    host: str
    port: int = Field(ge=1, le=65535)
    engine: Literal["auto", "llama_cpp", "mlx"]
    api_key: str
    api_key_file: str
    context_size: int = Field(ge=256)
    slots: int = Field(ge=1)
    queue_size: int = Field(ge=0)
    prefix_cache_bytes: int = Field(ge=0)
    threads: int = Field(ge=0)
    memory_budget_mb: int = Field(ge=0)
    keep_alive: float
    pinned: list[str]
    swap_grace_s: float = Field(ge=0)
    model_aliases: dict[str, str]
    claude_model: str
    claude_small_fast_model: str
    strip_billing_header: bool
    ui_prompt_text: bool
    allowed_hosts: list[str]
    state_dir: Path
    start_timeout_s: float = Field(gt=0)
    stop_grace_s: float = Field(gt=0)
    rpc_hosts: list[str]
    log_lines: int = Field(ge=1)
    chat_temperature: float = Field(ge=0, le=2)
    chat_max_tokens: int = Field(ge=0)

    _paths = field_validator("state_dir", mode="before")(lambda v: expand_path(str(v)))

    def sampling(self, max_tokens: int = 0, temperature: float = -1.0) -> tuple[int, float]:
        """server.chat's and models.run's max_tokens and temperature: a flag given (max_tokens > 0,
        temperature >= 0) beats chat_max_tokens / chat_temperature."""
        return max_tokens or self.chat_max_tokens, self.chat_temperature if temperature < 0 else temperature

    _keep_alive = field_validator("keep_alive", mode="before")(durations.seconds)
    _key_file = field_validator("api_key_file", mode="before")(
        lambda v: str(expand_path(str(v))) if v else ""
    )


SSH_NAME_RULE = "must not start with '-' or hold spaces or control characters"


def unsafe_ssh_name(value: str) -> bool:
    """A host or user name that an ssh command line would read as an option, or split in two."""
    return value.startswith("-") or any(ch.isspace() or not ch.isprintable() for ch in value)


def _ssh_name(value: str) -> str:
    if unsafe_ssh_name(value):
        raise PydanticCustomError("ssh_name", SSH_NAME_RULE)
    return value


class HostSettings(Section):
    """One inventory entry; empty fields fall back to ~/.ssh/config and the remote section."""

    host: str
    user: str = ""
    port: int = Field(default=0, ge=0, le=65535)
    checkout: str = ""
    python: str = ""
    tags: list[str] = []
    url: str = ""  # the host's server, for the gateway (empty: http://<host>:<server.port>)
    api_key: str = ""  # the key that server wants (or api_key_file, mode 600)
    api_key_file: str = ""
    priority: int = 0  # the gateway sends traffic to the lowest priority that can take it
    weight: int = Field(default=1, ge=1, le=256)  # share of traffic among hosts of one priority

    _names = field_validator("host", "user")(_ssh_name)
    _key_file = field_validator("api_key_file", mode="before")(
        lambda v: str(expand_path(str(v))) if v else ""
    )


class RemoteSettings(Section):
    checkout: str
    python: str
    host_key_policy: Literal["strict", "accept-new"]
    known_hosts: Path
    connect_timeout_s: float = Field(gt=0)
    repo_url: str

    _paths = field_validator("known_hosts", mode="before")(lambda v: expand_path(str(v)))


class GitSettings(Section):
    repo: Path
    log_count: int = Field(ge=1)

    _paths = field_validator("repo", mode="before")(lambda v: expand_path(str(v)))


class TestSettings(Section):
    request_timeout_s: float = Field(gt=0)
    max_tokens: int = Field(ge=1)
    stress_requests: int = Field(ge=1)
    stress_concurrency: int = Field(ge=1)
    stress_max_requests: int = Field(ge=1)
    memory_budget_mb: int = Field(ge=1)
    memory_requests: int = Field(ge=1)
    memory_concurrency: int = Field(ge=1)


class DoctorSettings(Section):
    state_dir: Path
    extras: list[str]
    ttl_s: dict[str, float]
    lock_timeout_s: float = Field(ge=0)
    keep_logs: int = Field(ge=1)
    ssh_timeout_s: float = Field(gt=0)
    min_free_disk_mb: int = Field(ge=0)

    _paths = field_validator("state_dir", mode="before")(lambda v: expand_path(str(v)))


class GatewaySettings(Section):
    """invoke.yaml's `lab_gateway:` section: one endpoint in front of every host's server."""

    host: str
    port: int = Field(ge=1, le=65535)
    api_key: str
    api_key_file: str
    state_dir: Path
    poll_s: float = Field(gt=0)
    cooldown_s: float = Field(gt=0)
    retries: int = Field(ge=0, le=10)
    max_body_mb: int = Field(ge=1, le=64)
    start_timeout_s: float = Field(gt=0)
    stop_grace_s: float = Field(gt=0)
    log_lines: int = Field(ge=1)

    _paths = field_validator("state_dir", mode="before")(lambda v: expand_path(str(v)))
    _key_file = field_validator("api_key_file", mode="before")(
        lambda v: str(expand_path(str(v))) if v else ""
    )


class Settings(Section):
    models: ModelsSettings
    server: ServerConfig
    lab_gateway: GatewaySettings  # not `gateway`: Fabric reads that key as its SSH jump host
    hosts: dict[str, HostSettings]
    remote: RemoteSettings
    git: GitSettings
    test: TestSettings
    doctor: DoctorSettings


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"invoke.yaml: missing setting '{where}' — add it (see the project's invoke.yaml)"
    if error["type"] == "extra_forbidden":
        return f"invoke.yaml: unknown setting '{where}' — remove it or fix its spelling"
    got = error.get("input")
    return f"invoke.yaml: '{where}' = {got!r}: {error['msg']} — fix the value in invoke.yaml"


def validate(config: Any) -> Settings:
    """Build Settings from the merged invoke configuration (a Context's config or a plain dict)."""
    try:
        return Settings.model_validate(sections(config))
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0])) from None


def load(config: Any = None) -> Settings:
    """Settings from a Context's config, or straight from the project's invoke.yaml."""
    if config is None:
        config = read_yaml(CONFIG_FILE)
    return validate(config)
