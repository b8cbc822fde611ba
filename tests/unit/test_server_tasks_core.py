"""tasks.core.server: invoke.yaml plus flags into the server's settings."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest

from tasks.core import config, server_state
from tasks.core import server as core
from tasks.core.errors import ConfigError, HomelabError
from tasks.core.server_state import StateFiles


def test_flags_beat_config_and_context_is_capped_by_the_model(project_config: dict[str, Any]) -> None:
    project_config["server"]["context_size"] = 65536
    served = core.served_settings(config.validate(project_config), port=9001, slots=3)
    assert (served.port, served.default.slots) == (9001, 3)
    assert served.queue_size == project_config["server"]["queue_size"]
    assert served.default.context_size == 8192  # smollm2's catalog context_length
    assert served.default.path.name.endswith(".gguf")


def test_model_not_on_disk_names_the_download_command(project_config: dict[str, Any]) -> None:
    with pytest.raises(HomelabError, match=r"inv models\.download tinyllama"):
        core.served_settings(config.validate(project_config), model="tinyllama")


def test_off_loopback_without_key_is_one_line(project_config: dict[str, Any]) -> None:
    with pytest.raises(HomelabError, match=r"^refusing to listen on 0\.0\.0\.0 without an API key"):
        core.served_settings(config.validate(project_config), host="0.0.0.0")


def test_mlx_engine_on_a_gguf_model_without_its_conversion_is_refused_before_starting(
    project_config: dict[str, Any], tmp_path: Path
) -> None:
    project_config["models"]["converted_dir"] = str(tmp_path)
    with pytest.raises(HomelabError, match=r"^model 'smollm2' is GGUF and has no MLX conversion") as refused:
        core.served_settings(config.validate(project_config), engine="mlx")
    assert refused.value.fix == "run `inv models.convert smollm2`"


def test_claude_code_environment_follows_the_running_server(
    project_config: dict[str, Any], tmp_path: Path
) -> None:
    from tasks.core import claude_code

    settings = config.validate(project_config)
    served = core.served_settings(settings, host="0.0.0.0", port=9123, api_key="k", context_size=4096)
    files = StateFiles(tmp_path)
    files.settings.write_text(served.model_dump_json())
    assert server_state.record(files, os.getpid(), psutil.Process().cmdline())  # stands in for a server
    endpoint = server_state.endpoint(files, settings.server)
    assert (endpoint.url, endpoint.api_key, endpoint.context_size) == ("http://127.0.0.1:9123", "k", 4096)
    cap = claude_code.chosen_cap(endpoint.context_size, 0)
    env = claude_code.environment(endpoint.url, endpoint.api_key, "m", "s", cap)
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:9123" and env["ANTHROPIC_AUTH_TOKEN"] == "k"
    assert int(env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"]) <= 4096 // 4


def test_start_refuses_a_port_in_use_before_spawning(project_config: dict[str, Any], tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        served = core.served_settings(config.validate(project_config), port=port)
        with pytest.raises(HomelabError, match=f"port {port} on 127.0.0.1 is already in use"):
            core.start(served, StateFiles(tmp_path), timeout_s=5)
    assert not (tmp_path / "server.pid").exists()


def test_a_queue_size_of_zero_is_a_value_not_unset(project_config: dict[str, Any]) -> None:
    none_wait = core.served_settings(config.validate(project_config), queue_size=0)
    unset = core.served_settings(config.validate(project_config), queue_size=-1)
    assert none_wait.queue_size == 0
    assert unset.queue_size == project_config["server"]["queue_size"] > 0


def test_models_aliases_keep_alive_and_pins_come_from_config_or_flags(project_config: dict[str, Any]) -> None:
    project_config["server"].update(keep_alive="1h30m", pinned=["smollm2"])
    served = core.served_settings(
        config.validate(project_config), models="smollm2", alias=["claude-haiku-*=smollm2", "gpt-*"]
    )
    assert [spec.name for spec in served.models] == ["smollm2"]
    assert (served.default.keep_alive_s, served.default.pinned) == (5400, True)
    assert [(a.pattern, a.model) for a in served.model_aliases] == [
        ("claude-haiku-*", "smollm2"),
        ("gpt-*", "smollm2"),
    ]
    assert served.route("gpt-4o") == served.default


def test_an_alias_to_a_model_not_served_names_it_and_the_fix(project_config: dict[str, Any]) -> None:
    with pytest.raises(HomelabError, match=r"^alias 'claude-haiku-\*' routes to 'qwen', which this server"):
        core.served_settings(config.validate(project_config), alias=["claude-haiku-*=qwen"])
    project_config["server"]["pinned"] = ["qwen"]
    with pytest.raises(HomelabError, match=r"server.pinned names \['qwen'\], which this server does not"):
        core.served_settings(config.validate(project_config))


def test_a_bad_keep_alive_is_one_line_naming_the_setting(project_config: dict[str, Any]) -> None:
    project_config["server"]["keep_alive"] = "soon"
    with pytest.raises(ConfigError, match=r"'server.keep_alive' = 'soon': .*30s, 5m, 1h30m"):
        config.validate(project_config)


def test_a_default_model_over_the_budget_is_refused_with_its_numbers(project_config: dict[str, Any]) -> None:
    project_config["server"]["memory_budget_mb"] = 8
    with pytest.raises(HomelabError, match=r"^model 'smollm2' needs [\d,]+ MiB \(weights [\d,]+ MiB \+ KV"):
        core.served_settings(config.validate(project_config))
