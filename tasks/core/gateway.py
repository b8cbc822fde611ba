"""The gateway: one endpoint for the lab, HAProxy routing to each host's server, our controller beside it.

`start` writes the plan (engine settings and hosts, keys included: mode 600) to lab_gateway.state_dir and
starts the controller (tasks.core.gateway_controller) detached, which runs HAProxy and the lab view's
process (tasks.core.gateway_dashboard). The process is
recorded and stopped as the server's is (tasks.core.server_state, tasks.core.server.stop). `drain`,
`resume` and `lab_state` talk to the controller's unix socket; with no gateway running they say so and
change nothing, so fleet.deploy may call them on any host.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tasks.core import server_state
from tasks.core.config import GatewaySettings, Settings
from tasks.core.errors import HomelabError
from tasks.core.files import PRIVATE, write_atomically
from tasks.core.haproxy import Engine, Host
from tasks.core.server_state import Running, StateFiles

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
CONTROL_TIMEOUT_S = 30.0


def files(settings: Settings) -> StateFiles:
    return StateFiles(settings.lab_gateway.state_dir, "gateway")


def _key_safe(key: str, where: str) -> str:
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise HomelabError(f"{where}: the API key holds spaces or control characters", "use a plain token")
    return key


def hosts(settings: Settings) -> list[Host]:
    """The inventory as the gateway reaches it: each host's URL, its own key, priority and weight."""
    found = []
    for name, entry in settings.hosts.items():
        if not name.replace("-", "").replace("_", "").isalnum():
            raise HomelabError(f"hosts.{name}: the gateway needs a name of letters, digits, - and _")
        url = (entry.url or f"http://{entry.host}:{settings.server.port}").rstrip("/")
        if not url.startswith("http://"):
            raise HomelabError(f"hosts.{name}.url = {url!r}: the gateway reaches servers over http://")
        if entry.api_key and entry.api_key_file:
            raise HomelabError(f"hosts.{name}: api_key and api_key_file are both set", "keep one of them")
        key = server_state.read_key_file(Path(entry.api_key_file)) if entry.api_key_file else entry.api_key
        found.append(Host(name, url, _key_safe(key, f"hosts.{name}"), entry.priority, entry.weight))
    if not found:
        raise HomelabError(
            "no hosts in invoke.yaml for the gateway to route to", "add them under hosts: (see invoke.yaml)"
        )
    return found


def gateway_key(section: GatewaySettings, key: str = "") -> str:
    if key:
        return _key_safe(key, "--api-key")
    if section.api_key and section.api_key_file:
        raise HomelabError(
            "lab_gateway.api_key and lab_gateway.api_key_file are both set", "keep one of them"
        )
    found = (
        server_state.read_key_file(Path(section.api_key_file)) if section.api_key_file else section.api_key
    )
    return _key_safe(found, "lab_gateway.api_key")


def engine(settings: Settings, host: str = "", port: int = 0, key: str = "") -> Engine:
    """The engine's settings: invoke.yaml's lab_gateway section, flags winning; off loopback needs a key."""
    section = settings.lab_gateway
    host, port = host or section.host, port or section.port
    api_key = gateway_key(section, key)
    if host not in LOOPBACK and not api_key:
        raise HomelabError(
            f"the gateway would listen on {host} without a key",
            "set lab_gateway.api_key (or api_key_file), or listen on 127.0.0.1",
        )
    return Engine(
        listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        api_key=api_key,
        state_dir=section.state_dir,
        poll_s=section.poll_s,
        cooldown_s=section.cooldown_s,
        retries=section.retries,
        max_body_bytes=section.max_body_mb * 2**20,
        stop_grace_s=section.stop_grace_s,
    )


def url(engine: Engine) -> str:
    host, _, port = engine.listen.rpartition(":")
    return server_state.client_url(host.strip("[]"), int(port))


def config_text(settings: Settings, engine: Engine, reveal: bool = False) -> str:
    """The HAProxy configuration the gateway starts with (before any host was polled), keys redacted
    unless `reveal`."""
    from tasks.core import haproxy

    found = hosts(settings)
    text = haproxy.config(engine, found, {}, set())
    return text if reveal else haproxy.redact(text, [engine.api_key, *(h.api_key for h in found)])


def start(settings: Settings, engine: Engine) -> str:
    """Start the controller (and through it HAProxy) detached; the gateway's URL once /health answers."""
    from tasks.core import server as core

    if not _have_haproxy():
        raise HomelabError(
            "haproxy is not installed", "install it: apt-get install haproxy (brew install haproxy)"
        )
    state = files(settings)
    plan = {
        "engine": {**asdict(engine), "state_dir": str(engine.state_dir)},
        "hosts": [asdict(h) for h in hosts(settings)],
        "allowed_hosts": settings.server.allowed_hosts,  # the Host names a keyless lab view answers
    }
    with server_state.start_lock(state):
        found = server_state.look(state)
        if isinstance(found, Running):
            raise HomelabError(
                f"a gateway is already running (pid {found.pid})", "stop it first: inv gateway.stop"
            )
        host, _, port = engine.listen.rpartition(":")
        if not core.port_free(host.strip("[]"), int(port)):
            raise HomelabError(f"port {port} on {host} is already in use", "pick another with --port")
        write_atomically(state.settings, json.dumps(plan, indent=2), mode=PRIVATE)
        command = [sys.executable, "-m", "tasks.core.gateway_controller", str(state.settings)]
        process, recorded = core.launch(state, command)
    where = url(engine)
    problem = (
        core.wait_healthy(where, process, settings.lab_gateway.start_timeout_s) if recorded else "it exited"
    )
    if problem:
        core.stop(state, settings.lab_gateway.stop_grace_s)
        raise HomelabError(
            f"the gateway did not start: {problem}; its log ends with:\n{core.tail(state.log, 15)}",
            f"full log: {state.log}",
        )
    return where


def stop(settings: Settings) -> Running | server_state.Stale | None:
    """SIGTERM: HAProxy stops listening and in-flight requests finish (lab_gateway.stop_grace_s)."""
    from tasks.core import server as core

    return core.stop(files(settings), settings.lab_gateway.stop_grace_s)


def running(settings: Settings) -> bool:
    return isinstance(server_state.look(files(settings)), Running)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__("control", timeout=timeout_s)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def _control(settings: Settings, method: str, path: str) -> dict[str, Any]:
    return control(settings.lab_gateway.state_dir / "control.sock", method, path)


def control(socket_path: Path, method: str, path: str) -> dict[str, Any]:
    """One request to the running gateway's controller (the tasks', and the gateway's lab view's)."""
    connection = _UnixConnection(socket_path, CONTROL_TIMEOUT_S)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise HomelabError(
            f"the gateway's controller does not answer ({exc})", "see inv gateway.logs"
        ) from None
    finally:
        connection.close()
    if response.status != 200:
        raise HomelabError(str(body.get("error", {}).get("message", f"HTTP {response.status}")))
    return dict(body)


def lab_state(settings: Settings) -> dict[str, Any] | None:
    """What the running gateway knows of the lab (as GET /gateway/state); None when none runs."""
    return _control(settings, "GET", "/gateway/state") if running(settings) else None


def drain(settings: Settings, host: str) -> str:
    """No new requests to `host`, in-flight ones finish; a message, and a no-op when no gateway runs."""
    return _set_drained(settings, host, "drain")


def resume(settings: Settings, host: str) -> str:
    """`host` takes requests again; a no-op with a message when no gateway runs."""
    return _set_drained(settings, host, "resume")


def _set_drained(settings: Settings, host: str, action: str) -> str:
    if not running(settings):
        return f"no gateway running here: nothing to {action} for {host}"
    row = _control(settings, "POST", f"/gateway/hosts/{host}/{action}")
    return f"{host}: {row['state']} ({row['in_flight']} requests in flight)"


def _have_haproxy() -> bool:
    import shutil

    return shutil.which("haproxy") is not None
