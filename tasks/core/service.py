"""The server as a user service that survives a reboot: a systemd user unit (Linux) or a launchd agent
(macOS), generated from the served settings, and the manager's word on whether it runs.

The service runs `python -m inference_server --settings FILE`, as server.start does: FILE
(server.state_dir/service.json, mode 600) holds every setting, the API key included, so the key is
never on a command line; its output goes to server.state_dir/server.log, where server.logs reads.
Changing invoke.yaml means installing again (the file is written at install time).
"""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inference_server.settings import ServerSettings
from tasks.core.config_file import PROJECT_ROOT
from tasks.core.errors import HomelabError
from tasks.core.files import PRIVATE, write_atomically
from tasks.core.server_state import StateFiles

UNIT = "llm-homelab.service"
LABEL = "org.llm-homelab.server"
RESTART_DELAY_S = 5  # between a crash and the next start: a crash loop stays slow

Manager = Literal["systemd", "launchd"]


def manager() -> Manager:
    """The service manager of this platform (systemd user units on Linux, launchd agents on a Mac)."""
    if sys.platform == "darwin":
        return "launchd"
    if sys.platform.startswith("linux"):
        return "systemd"
    raise HomelabError(f"no user service manager known on {sys.platform}", "run inv server.start instead")


def settings_file(files: StateFiles) -> Path:
    return files.folder / "service.json"


def definition_file(kind: Manager) -> Path:
    """Where the unit or the agent's plist goes."""
    if kind == "launchd":
        return Path.home() / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "systemd" / "user" / UNIT


def command(files: StateFiles) -> list[str]:
    return [sys.executable, "-m", "inference_server", "--settings", str(settings_file(files))]


def _description(served: ServerSettings) -> str:
    return f"llm-homelab inference server ({served.default_model} on {served.host}:{served.port})"


def unit_text(served: ServerSettings, files: StateFiles) -> str:
    """A systemd user unit: restarted on failure, output appended to the server log."""
    log = str(files.log).replace("%", "%%")  # a path setting is its whole line: specifiers, no quotes
    return "\n".join(
        [
            "[Unit]",
            f"Description={_description(served)}",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=exec",
            f"ExecStart={' '.join(_unit_word(word) for word in command(files))}",
            f"WorkingDirectory={str(PROJECT_ROOT).replace('%', '%%')}",
            "Environment=PYTHONUNBUFFERED=1",
            f"StandardOutput=append:{log}",
            f"StandardError=append:{log}",
            "Restart=on-failure",
            f"RestartSec={RESTART_DELAY_S}",
            f"TimeoutStopSec={int(served.stop_grace_s) + 10}",
            "",
            "[Install]",
            "WantedBy=default.target",
            "",
        ]
    )


def _unit_word(word: str) -> str:
    """One ExecStart word as systemd reads it: % doubled, quoted when it holds a space or a quote."""
    word = word.replace("%", "%%")
    if any(ch.isspace() or ch in "\"'\\" for ch in word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def plist_text(served: ServerSettings, files: StateFiles) -> str:
    """A launchd agent: started at login, started again when it exits unsuccessfully."""
    agent = {
        "Label": LABEL,
        "ProgramArguments": command(files),
        "WorkingDirectory": str(PROJECT_ROOT),
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": RESTART_DELAY_S,
        "StandardOutPath": str(files.log),
        "StandardErrorPath": str(files.log),
        "ProcessType": "Interactive",
    }
    return plistlib.dumps(agent).decode()


def definition(kind: Manager, served: ServerSettings, files: StateFiles) -> str:
    return plist_text(served, files) if kind == "launchd" else unit_text(served, files)


@dataclass(frozen=True)
class Installed:
    manager: Manager
    path: Path
    advice: str  # what else the owner should do (enable lingering), or ""


def install(served: ServerSettings, files: StateFiles) -> Installed:
    """Write the settings file and the unit (or plist), then enable and start it."""
    kind = manager()
    path = definition_file(kind)
    write_atomically(settings_file(files), served.model_dump_json(indent=2), mode=PRIVATE)
    write_atomically(path, definition(kind, served, files), mode=0o644)
    if kind == "systemd":
        _manage(["systemctl", "--user", "daemon-reload"])
        _manage(["systemctl", "--user", "enable", UNIT])
        _manage(["systemctl", "--user", "restart", UNIT])
        return Installed(kind, path, _linger_advice())
    domain = f"gui/{os.getuid()}"
    _manage(["launchctl", "bootout", f"{domain}/{LABEL}"], check=False)  # an older copy of the agent
    _manage(["launchctl", "bootstrap", domain, str(path)])
    return Installed(kind, path, "")


def uninstall(files: StateFiles) -> Path | None:
    """Stop and remove the service; the path removed, or None when none was installed."""
    kind = manager()
    path = definition_file(kind)
    if not path.exists():
        return None
    if kind == "systemd":
        _manage(["systemctl", "--user", "disable", "--now", UNIT], check=False)
        path.unlink()
        _manage(["systemctl", "--user", "daemon-reload"], check=False)
    else:
        _manage(["launchctl", "bootout", f"gui/{os.getuid()}/{LABEL}"], check=False)
        path.unlink()
    settings_file(files).unlink(missing_ok=True)
    return path


def installed() -> Manager | None:
    """The manager the service is installed with here, if it is."""
    try:
        kind = manager()
    except HomelabError:
        return None
    return kind if definition_file(kind).exists() else None


def main_pid(kind: Manager) -> int:
    """The server's pid as the manager reports it; 0 when it is not running."""
    if kind == "systemd":
        shown = _manage(["systemctl", "--user", "show", "--property=MainPID", "--value", UNIT], check=False)
        return int(shown.strip() or 0) if shown.strip().isdigit() else 0
    listed = _manage(["launchctl", "print", f"gui/{os.getuid()}/{LABEL}"], check=False)
    for line in listed.splitlines():
        key, _, value = line.strip().partition(" = ")
        if key == "pid" and value.isdigit():
            return int(value)
    return 0


def start(kind: Manager) -> None:
    if kind == "systemd":
        _manage(["systemctl", "--user", "start", UNIT])
    else:
        _manage(["launchctl", "kickstart", f"gui/{os.getuid()}/{LABEL}"])


def stop(kind: Manager) -> None:
    """Through the manager, so it does not start the server again (SIGTERM: requests finish first)."""
    if kind == "systemd":
        _manage(["systemctl", "--user", "stop", UNIT])
    else:  # a clean exit after SIGTERM is not restarted (KeepAlive: SuccessfulExit false)
        _manage(["launchctl", "kill", "SIGTERM", f"gui/{os.getuid()}/{LABEL}"])


def _linger_advice() -> str:
    """Without lingering a user's services stop at logout and start only at login, not at boot."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
    shown = _manage(["loginctl", "show-user", user, "--property=Linger", "--value"], check=False)
    if shown.strip() == "yes":
        return ""
    return f"to start it at boot, not at login: sudo loginctl enable-linger {user}"


def _manage(args: list[str], check: bool = True) -> str:
    """Run the service manager's command; a failure is one line with its own message."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        if not check:
            return ""
        raise HomelabError(
            f"`{args[0]}` is not on this host", "install the service on a systemd or macOS host"
        ) from None
    if check and done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise HomelabError(f"`{' '.join(args)}` failed: {said[-1] if said else f'exit {done.returncode}'}")
    return done.stdout
