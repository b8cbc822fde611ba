"""`inv config.show`: each setting's source, with a file at every level invoke reads and an INVOKE_*
variable, through a real `inv` run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tasks.core.config_file import SECTIONS
from tests.fixtures.sshd import Lab, cli

ROOT = Path(__file__).resolve().parents[2]

# `inv` itself, except that invoke's system-wide prefix (/etc/) points into the test's folder: this is
# a shared machine, and /etc/invoke.yaml would change every other run on it.
_INV_WITH_SYSTEM_PREFIX = """
import os, sys
from invoke import Config
from invoke.main import program

class SystemPrefix(Config):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "system_prefix": os.environ["TEST_SYSTEM_PREFIX"]})

program.config_class = SystemPrefix
program.run(["inv", *sys.argv[1:]])
"""


def show(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "HOME": str(tmp_path / "home"), "TEST_SYSTEM_PREFIX": f"{tmp_path}/etc/"}
    environ = {k: v for k, v in environ.items() if not k.startswith("INVOKE_")} | (env or {})
    command = [sys.executable, "-c", _INV_WITH_SYSTEM_PREFIX, "--search-root", str(ROOT), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environ, timeout=120)


def rows(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert done.returncode == 0, done.stderr
    return {row["setting"]: row for row in json.loads(done.stdout)["rows"]}


def test_each_setting_names_the_level_its_value_comes_from(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "invoke.yaml").write_text("hosts: {a: {host: a.lan, port: 2201}}\n")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".invoke.yaml").write_text("hosts: {a: {port: 2202}, b: {host: b.lan}}\n")
    runtime = tmp_path / "run.yaml"
    runtime.write_text("server: {chat_max_tokens: 32}\n")
    env = {"INVOKE_SERVER_PORT": "9200", "INVOKE_SERVER_CHAT_MAX_TOKENS": "64"}

    found = rows(show(tmp_path, "-f", str(runtime), "config.show", "--json", env=env))

    assert found["hosts.a.host"] == {
        "setting": "hosts.a.host",
        "value": "a.lan",
        "source": f"{tmp_path}/etc/invoke.yaml",
    }
    assert found["hosts.a.port"]["value"] == 2202  # ~/.invoke.yaml beats /etc/invoke.yaml
    assert found["hosts.a.port"]["source"] == "~/.invoke.yaml"
    assert found["hosts.b.host"]["source"] == "~/.invoke.yaml"
    assert found["server.port"]["value"] == 9200  # INVOKE_* beats the files
    assert found["server.port"]["source"] == "INVOKE_SERVER_PORT"
    assert found["server.chat_max_tokens"]["value"] == 32  # -f beats INVOKE_*
    assert found["server.chat_max_tokens"]["source"] == f"-f {runtime}"
    assert found["server.engine"] == {
        "setting": "server.engine",
        "value": "auto",
        "source": f"{ROOT}/invoke.yaml (default)",
    }
    assert found["doctor.ttl_s.models"]["value"] == 3600


def test_a_machines_own_file_overrides_the_checkouts_defaults(tmp_path: Path) -> None:
    """invoke alone would rank the checkout's invoke.yaml (its project level) above ~/.invoke.yaml,
    and since it sets every key, a machine's own file could change nothing: here it is the defaults."""
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".invoke.yaml").write_text("server: {log_lines: 6}\n")

    found = rows(show(tmp_path, "config.show", "--json"))

    assert found["server.log_lines"]["value"] == 6
    assert found["server.log_lines"]["source"] == "~/.invoke.yaml"
    assert found["server.engine"]["source"] == f"{ROOT}/invoke.yaml (default)"
    assert found["hosts"]["value"] == {}  # an empty section is a setting too


def test_secrets_show_as_set_or_unset_unless_revealed(tmp_path: Path) -> None:
    env = {"INVOKE_SERVER_API_KEY": "s3cret"}

    hidden = show(tmp_path, "config.show", "-k", "server", env=env)
    shown = rows(show(tmp_path, "config.show", "--key", "server.api_key", "--json", "--reveal", env=env))

    assert "s3cret" not in hidden.stdout
    assert {"server.api_key", "set", "INVOKE_SERVER_API_KEY"} <= {c.strip() for c in hidden.stdout.split("│")}
    assert shown == {
        "server.api_key": {"setting": "server.api_key", "value": "s3cret", "source": "INVOKE_SERVER_API_KEY"}
    }


def test_an_unknown_setting_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    done = show(tmp_path, "config.show", "--key", "server.prot")

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: no setting 'server.prot' — see `inv config.show` for every SECTION.KEY"
        f" ({', '.join(SECTIONS)})"
    ]


def test_through_fab_a_host_shows_its_own_settings(ssh_lab: Lab, tmp_path: Path) -> None:
    lab = ssh_lab.write_config(tmp_path / "lab.yaml")

    found = rows(cli("fab", lab, "-H", "b", "config.show", "--key", "server", "--json"))

    assert found["server.port"]["source"] == "INVOKE_SERVER_PORT"  # b's sshd sets it for its sessions
    assert found["server.engine"]["source"] == f"{ssh_lab.hosts['b'].checkout}/invoke.yaml (default)"
