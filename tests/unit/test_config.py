from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Config
from invoke.env import Environment

from tasks.core import config, config_file
from tasks.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_project_invoke_yaml_validates_and_expands_paths() -> None:
    settings = config.load()
    assert settings.server.host == "127.0.0.1"
    assert settings.models.catalog == ROOT / "catalog.yaml"
    assert settings.models.cache_dir.is_absolute()


def test_missing_setting_is_named(project_config: dict) -> None:
    del project_config["server"]["port"]
    with pytest.raises(ConfigError, match=r"missing setting 'server.port'"):
        config.validate(project_config)


def test_unknown_setting_is_named(project_config: dict) -> None:
    project_config["server"]["prot"] = 1
    with pytest.raises(ConfigError, match=r"unknown setting 'server.prot'"):
        config.validate(project_config)


def test_bad_value_names_key_and_value(project_config: dict) -> None:
    project_config["server"]["port"] = "eighty"
    with pytest.raises(ConfigError, match=r"'server.port' = 'eighty'"):
        config.validate(project_config)


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    bad = tmp_path / "invoke.yaml"
    bad.write_text("server:\n  port: [1\n")
    with pytest.raises(ConfigError, match=r"invoke.yaml line \d+: not valid YAML"):
        config.read_yaml(bad)


def test_bad_invoke_yaml_gives_one_line_and_nonzero_exit(tmp_path: Path) -> None:
    """The whole CLI path: a user's override with a bad value, no traceback."""
    (tmp_path / "invoke.yaml").write_text("server:\n  port: eighty\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "invoke",
            "--search-root",
            str(ROOT),
            "-f",
            str(tmp_path / "invoke.yaml"),
            "models.catalog",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: invoke.yaml: 'server.port' = 'eighty': "
        "Input should be a valid integer, unable to parse string "
        "as an integer — fix the value in invoke.yaml"
    ]


def test_env_override_invoke_cannot_cast_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOKE_MODELS_FREE_SPACE_MARGIN_MB", "abc")
    with pytest.raises(ValueError):  # what invoke itself does with it, outside any task
        Environment(config.read_yaml(config.CONFIG_FILE), "INVOKE_").load()
    with pytest.raises(ConfigError, match=r"^INVOKE_MODELS_FREE_SPACE_MARGIN_MB='abc': .* fix or unset"):
        config_file.check_env_overrides("INVOKE_", os.environ)


def test_env_override_of_a_list_is_refused_with_the_file_to_use() -> None:
    with pytest.raises(ConfigError, match=r"INVOKE_DOCTOR_EXTRAS: .* set doctor.extras in ~/.invoke.yaml"):
        config_file.check_env_overrides("INVOKE_", {"INVOKE_DOCTOR_EXTRAS": "server"})


def test_env_overrides_invoke_can_cast_pass_and_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("INVOKE_")]:
        monkeypatch.delenv(name)  # only this test's overrides
    monkeypatch.setenv("INVOKE_MODELS_FREE_SPACE_MARGIN_MB", "7")
    monkeypatch.setenv("INVOKE_SERVER_HOST", "0.0.0.0")
    monkeypatch.setenv("INVOKE_DOCTOR_TTL_S_MODELS", "60")
    monkeypatch.setenv("INVOKE_HOSTS", "ignored by invoke: an empty mapping has no keys")
    monkeypatch.setenv("FABRIC_SERVER_PORT", "another program's prefix")
    config_file.check_env_overrides("INVOKE_", os.environ)
    assert Environment(config.read_yaml(config.CONFIG_FILE), "INVOKE_").load() == {
        "models": {"free_space_margin_mb": 7},
        "server": {"host": "0.0.0.0"},
        "doctor": {"ttl_s": {"models": 60}},
    }


def test_a_machines_files_override_the_checkouts_invoke_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkout's invoke.yaml is invoke's project level, which invoke ranks above /etc and ~;
    the settings rank it below them (and below a variable and `-f`, as invoke does)."""
    for name in [name for name in os.environ if name.startswith("INVOKE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("INVOKE_SERVER_CHAT_MAX_TOKENS", "17")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "invoke.yaml").write_text("server: {port: 9001, log_lines: 5}\n")
    (tmp_path / ".invoke.yaml").write_text("server: {port: 9002}\n")
    (tmp_path / "run.yaml").write_text("server: {chat_temperature: 0.5}\n")
    loaded = Config(
        system_prefix=f"{tmp_path}/etc/",
        user_prefix=f"{tmp_path}/.",
        project_location=str(config_file.PROJECT_ROOT),
        runtime_path=str(tmp_path / "run.yaml"),
    )
    loaded.load_project()
    loaded.load_runtime()
    loaded.load_shell_env()
    assert loaded.server.port == config.read_yaml(config.CONFIG_FILE)["server"]["port"]  # invoke's own view

    server = config.load(loaded).server
    assert (server.port, server.log_lines) == (9002, 5)
    assert (server.chat_max_tokens, server.chat_temperature) == (17, 0.5)


@pytest.mark.parametrize(
    ("program", "variable"), [("invoke", "INVOKE_SERVER_PORT"), ("fabric", "FABRIC_SERVER_PORT")]
)
def test_bad_env_override_gives_one_line_and_nonzero_exit(program: str, variable: str) -> None:
    """invoke reads these before any task runs; without the check it dies with a ValueError traceback."""
    result = subprocess.run(
        [sys.executable, "-m", program, "models.catalog"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, variable: "eighty"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {variable}='eighty': 'server.port' must be a whole number — fix or unset {variable}"
    ]


@pytest.mark.parametrize(
    ("key", "value"),
    [("host", "-oProxyCommand=touch /tmp/X"), ("host", "box -p 2"), ("host", "box\n"), ("user", "-lroot")],
)
def test_inventory_host_or_user_that_ssh_would_read_as_an_option_is_refused(
    project_config: dict, key: str, value: str
) -> None:
    project_config["hosts"] = {"evil": {"host": "box.lan", key: value}}
    with pytest.raises(ConfigError) as refused:
        config.validate(project_config)
    assert str(refused.value) == (
        f"invoke.yaml: 'hosts.evil.{key}' = {value!r}: must not start with '-' or hold spaces or control"
        " characters — fix the value in invoke.yaml"
    )
