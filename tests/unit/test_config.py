from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core import config
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
