"""server.install-service: the systemd unit and launchd plist it writes, checked by systemd's own
parser and by plistlib, and the install → status → stop → start → uninstall cycle through `inv`.

What runs for real: systemd-analyze (systemd 252's unit parser), the unit's ExecStart (the server, its
settings file, its log), every task. What cannot exist here: a user service manager (no systemd as
PID 1), so `systemctl --user` and `loginctl` are the stand-ins of tests/fixtures/service_manager.py.
launchctl is not exercised: only a Mac can show the agent loaded.
"""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inference_server.settings import ServerSettings
from tasks.core import server_state, service
from tasks.core.server_state import StateFiles
from tests.fixtures import service_manager
from tests.fixtures.server import API_KEY, settings_for_test
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served() -> ServerSettings:
    return settings_for_test(context_size=1024, slots=1)


def verify(unit: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze --user verify`: it needs only a private runtime directory, no running systemd."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    return subprocess.run(
        ["systemd-analyze", "--user", "verify", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_systemd_accepts_the_unit_and_it_keeps_the_key_off_the_command_line(
    served: ServerSettings, tmp_path: Path
) -> None:
    files = StateFiles(tmp_path / "state with space")
    unit = tmp_path / service.UNIT
    unit.write_text(service.unit_text(served, files))

    checked = verify(unit, tmp_path)
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    broken = verify(unit, tmp_path)

    assert (checked.returncode, checked.stderr) == (0, "")
    assert "Failed to parse service restart specifier" in broken.stderr  # the check can fail
    assert API_KEY not in unit.read_text()
    assert f"StandardOutput=append:{files.log}" in unit.read_text()


def test_the_plist_parses_and_runs_the_same_command_as_the_unit(
    served: ServerSettings, tmp_path: Path
) -> None:
    files = StateFiles(tmp_path / "state")
    agent = plistlib.loads(service.plist_text(served, files).encode())
    exec_start = next(
        line for line in service.unit_text(served, files).splitlines() if line.startswith("ExecStart=")
    )

    assert agent["Label"] == service.LABEL
    assert agent["ProgramArguments"] == shlex.split(exec_start.removeprefix("ExecStart="))
    assert agent["KeepAlive"] == {"SuccessfulExit": False} and agent["RunAtLoad"] is True
    assert agent["StandardOutPath"] == agent["StandardErrorPath"] == str(files.log)
    assert API_KEY not in service.plist_text(served, files)


def test_install_status_stop_start_uninstall_go_through_the_service_manager(tmp_path: Path) -> None:
    calls = service_manager.install(tmp_path / "bin")
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    key_file.chmod(0o600)
    state = tmp_path / "state"
    port = free_port()
    env = {
        **os.environ,
        **service_manager.environment(tmp_path / "bin"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "INVOKE_SERVER_STATE_DIR": str(state),
        "INVOKE_SERVER_PORT": str(port),
        "INVOKE_SERVER_API_KEY_FILE": str(key_file),
        "INVOKE_SERVER_CONTEXT_SIZE": "1024",
        "INVOKE_SERVER_SLOTS": "1",
    }

    def inv(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args]
        return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)

    unit = tmp_path / "config" / "systemd" / "user" / service.UNIT
    try:
        installed = inv("server.install-service")
        assert installed.returncode == 0, installed.stderr
        assert f"installed {unit} (systemd)" in installed.stdout
        assert "sudo loginctl enable-linger" in installed.stdout  # the stand-in says lingering is off
        assert (state / "service.json").stat().st_mode & 0o777 == 0o600
        assert API_KEY in (state / "service.json").read_text() and API_KEY not in unit.read_text()
        started = inv("server.start")  # already running: the manager's start is a no-op, then healthy
        assert started.returncode == 0 and "systemd)" in started.stdout, started.stderr

        status = inv("server.status", "--json")
        row = json.loads(status.stdout)["rows"][0]
        assert (row["run by"], row["health"], row["url"]) == ("systemd", "ok", f"http://127.0.0.1:{port}")
        assert "Uvicorn running on" in inv("server.logs").stdout
        assert inv("server.start", "--port", "9").stderr.startswith("error: the server runs under systemd")

        assert f"stopped (pid {row['pid']}, systemd)" in inv("server.stop").stdout
        assert not server_state.health(f"http://127.0.0.1:{port}").ok
        assert "the systemd service is installed" in inv("server.status").stdout
        assert inv("server.start").returncode == 0
        assert server_state.health(f"http://127.0.0.1:{port}").ok
    finally:
        removed = inv("server.uninstall-service")
    assert f"removed {unit}" in removed.stdout, removed.stderr
    assert not unit.exists() and not (state / "service.json").exists()
    assert not server_state.health(f"http://127.0.0.1:{port}").ok
    asked = calls.read_text().splitlines()
    assert asked[:3] == [
        "systemctl --user daemon-reload",
        f"systemctl --user enable {service.UNIT}",
        f"systemctl --user restart {service.UNIT}",
    ]
    assert f"systemctl --user disable --now {service.UNIT}" in asked
