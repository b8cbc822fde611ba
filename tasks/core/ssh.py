"""SSH connections with checked host keys, and one-line messages for what goes wrong connecting.

Fabric's Connection never reads known_hosts and trusts any host key it sees (AutoAddPolicy); every
connection this project opens goes through `connect`, which checks keys against known_hosts.
Imports paramiko: task modules import this inside task bodies.
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from tasks.core.errors import HomelabError


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: host as given (ssh_config alias, name or address), optional user and port."""

    host: str
    user: str = ""
    port: int = 0


_KNOWN_HOSTS_WRITE = threading.Lock()  # fleet threads accepting new keys at once must not lose one


class UnknownHostKey(HomelabError):
    """The host's key is not in known_hosts and the policy is strict."""


def fabric_config(config: Any) -> Any:
    """A fabric Config from a fab or inv context's config, with ~/.ssh/config (or ssh_config_path) read."""
    import fabric

    if isinstance(config, fabric.Config):
        return config
    converted = config.clone(into=fabric.Config)
    converted.load_ssh_config()
    return converted


def connect(endpoint: Endpoint, config: Any, policy: str, known_hosts: Path, timeout_s: float) -> Any:
    """A fabric Connection (opened lazily) that refuses, or with accept-new records, unknown host keys."""
    import fabric

    connection = fabric.Connection(
        endpoint.host,
        user=endpoint.user or None,
        port=endpoint.port or None,
        config=fabric_config(config),
        connect_timeout=int(timeout_s) or 1,  # fabric int()s it, and 0 would mean no timeout at all
    )
    check_host_keys(connection, policy, known_hosts)
    return connection


def check_host_keys(connection: Any, policy: str, known_hosts: Path) -> None:
    """Make a not yet opened fabric Connection, and every ProxyJump hop before it, check the host's
    key against known_hosts (the ssh config's UserKnownHostsFile if it names one) instead of trusting
    whatever key it is shown: fabric builds each hop as a Connection of its own, with AutoAddPolicy."""
    hop = connection
    while hop is not None and not isinstance(hop, str):  # a str gateway is a ProxyCommand: no keys
        files = hop.ssh_config.get("userknownhostsfile", str(known_hosts)).split()
        known = Path(os.path.expanduser(files[0]))
        if known.exists():
            hop.client.load_host_keys(str(known))
        hop.client.set_missing_host_key_policy(
            _HostKeyPolicy(accept_new=policy == "accept-new", known_hosts=known, port=hop.port)
        )
        hop.connect_timeout = hop.connect_timeout or connection.connect_timeout
        hop = hop.gateway or None


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko only for hosts missing from known_hosts (a changed key fails before this)."""

    def __init__(self, accept_new: bool, known_hosts: Path, port: int) -> None:
        self.accept_new = accept_new
        self.known_hosts = known_hosts
        self.port = port

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        if not self.accept_new:
            host = hostname.removeprefix("[").split("]")[0]
            raise UnknownHostKey(
                f"unknown SSH host key for {hostname} ({key.get_name()} {key.fingerprint})",
                f"if that is the host's key, trust it: ssh-keyscan -p {self.port} {host} >> "
                f"{self.known_hosts} (or set remote.host_key_policy: accept-new)",
                exit_code=255,  # as ssh exits when it refuses a host
            )
        client.get_host_keys().add(hostname, key.get_name(), key)
        with _KNOWN_HOSTS_WRITE:
            _append_line(self.known_hosts, f"{hostname} {key.get_name()} {key.get_base64()}")


def _append_line(path: Path, line: str) -> None:
    """Add a line to a file by writing a full new copy and renaming it over the old one; a symlinked
    file is rewritten where it points (the link stays a link) and keeps its mode."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old, mode = path.read_text(), stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        old, mode = "", 0o600
    if old and not old.endswith("\n"):
        old += "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{old}{line}\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def describe_failure(exc: BaseException, where: str) -> HomelabError | None:
    """A one-line HomelabError for an SSH connection failure, or None if `exc` is not one."""
    if isinstance(exc, HomelabError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HomelabError(
            f"{where}: SSH host key CHANGED (possible man-in-the-middle)",
            "if the host was reinstalled, remove its old line from known_hosts (ssh-keygen -R HOST)",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return HomelabError(
            f"{where}: SSH login refused", "check the user and that your key is in its authorized_keys"
        )
    if isinstance(exc, socket.gaierror | UnicodeError):  # UnicodeError: not even a valid name
        return HomelabError(f"{where}: unknown host name", "check the name in hosts: or ~/.ssh/config")
    if isinstance(exc, TimeoutError | socket.timeout):
        return HomelabError(f"{where}: SSH connection timed out", "is the host up and on the network?")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionError):
        return HomelabError(f"{where}: cannot connect over SSH", "is sshd running there, on that port?")
    if isinstance(exc, paramiko.SSHException | OSError):
        return HomelabError(f"{where}: SSH failed ({exc})", "check the host and its sshd")
    return None
