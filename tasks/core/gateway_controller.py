"""The gateway's controller: the process `inv gateway.start` runs beside HAProxy, and its parent.

HAProxy routes; this keeps its configuration true to the lab. Every lab_gateway.poll_s it reads each host's
`/v1/models` (ids, aliases, and whether each model is loaded), regenerates the configuration
(tasks.core.haproxy) and reloads HAProxy when it changed. It also answers what HAProxy cannot: the union
of the lab's models at `/v1/models` (and at Ollama's `/api/tags` and `/api/ps`), the lab's state as JSON
at `/gateway/state`, and drain/resume at `POST /gateway/hosts/NAME/drain|resume` — on a unix socket
HAProxy forwards to (behind the gateway key) and the tasks use directly. It also keeps the lab view's
process running (tasks.core.gateway_dashboard, which HAProxy serves at /ui). Standard library only.

Run: `python -m tasks.core.gateway_controller PLAN.json` (the plan gateway.start writes, mode 600).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tasks.core import haproxy
from tasks.core.haproxy import Engine, Host, Route

POLL_TIMEOUT_S = 3.0


@dataclass
class Seen:
    """What the last poll of one host found."""

    answered: bool = False
    models: list[dict[str, Any]] = field(default_factory=list)  # its /v1/models entries
    detail: str = "not polled yet"


def _get(host: Host, path: str) -> Any:
    """A host's JSON at `path`, asked with its own key (raises OSError, HTTPError, ValueError)."""
    headers = {"Authorization": f"Bearer {host.api_key}"} if host.api_key else {}
    request = urllib.request.Request(f"{host.url}{path}", headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=POLL_TIMEOUT_S) as response:
        return json.loads(response.read())


def _poll(host: Host) -> Seen:
    try:
        data = _get(host, "/v1/models").get("data", [])
    except urllib.error.HTTPError as exc:
        return Seen(False, [], f"HTTP {exc.code} from /v1/models")
    except (OSError, ValueError) as exc:
        return Seen(False, [], f"no answer ({getattr(exc, 'reason', exc)})")
    return Seen(True, [m for m in data if isinstance(m, dict) and "id" in m], "ok")


def _die_with_parent() -> None:
    """HAProxy (and the lab view) get SIGTERM when the controller dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG).
    Runs in the forked child: prctl is looked up beforehand, in the parent."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)


_PRCTL = ctypes.CDLL(None).prctl if sys.platform == "linux" else None


class Controller:
    def __init__(self, engine: Engine, hosts: list[Host], plan: Path) -> None:
        self.engine = engine
        self.hosts = hosts
        self.plan = plan
        self.seen: dict[str, Seen] = {h.name: Seen() for h in hosts}
        self.drained: set[str] = self._read_drained()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.process: subprocess.Popen[bytes] | None = None
        self.dashboard: subprocess.Popen[bytes] | None = None
        self.dashboard_socket: socket.socket | None = None
        self.applied = ""
        self.counted: dict[int, dict[str, tuple[int, int]]] = {}  # worker pid -> host -> routed, retried

    @property
    def cfg(self) -> Path:
        return self.engine.state_dir / "haproxy.cfg"

    @property
    def drained_file(self) -> Path:
        return self.engine.state_dir / "drained.json"

    def _read_drained(self) -> set[str]:
        try:
            return set(json.loads(self.drained_file.read_text()))
        except (OSError, ValueError):
            return set()

    def routes(self) -> dict[str, list[Route]]:
        """Each model id any host lists -> the hosts listing it, a last-seen list kept for a host that
        stopped answering (HAProxy's probe tells whether it is down)."""
        found: dict[str, list[Route]] = {}
        for host in self.hosts:
            for model in self.seen[host.name].models:
                loaded = model.get("state") == "loaded"
                found.setdefault(model["id"], []).append(Route(host, loaded, host.name in self.drained))
        return found

    def apply(self) -> None:
        """Regenerate the configuration; (re)load HAProxy when it changed."""
        with self.lock:
            text = haproxy.config(self.engine, self.hosts, self.routes(), self.drained)
            if text == self.applied and self.process and self.process.poll() is None:
                return
            self.cfg.write_text(text)
            os.chmod(self.cfg, 0o600)
            if self.process is None or self.process.poll() is not None:
                self.process = subprocess.Popen(
                    ["haproxy", "-W", "-db", "-f", str(self.cfg)],
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            else:
                self.process.send_signal(signal.SIGUSR2)  # seamless: old workers finish their requests
            self.applied = text

    def keep_dashboard(self) -> None:
        """(Re)start the lab view's process when it is not running; it reads the same plan. Its socket
        is ours, listening before HAProxy starts: a page asked for early waits in the backlog."""
        if self.dashboard_socket is None:
            self.dashboard_socket = _listening(self.engine.dashboard_socket)
        if self.dashboard is None or self.dashboard.poll() is not None:
            fd = self.dashboard_socket.fileno()
            self.dashboard = subprocess.Popen(
                [sys.executable, "-m", "tasks.core.gateway_dashboard", str(self.plan), str(fd)],
                stdin=subprocess.DEVNULL,
                pass_fds=[fd],
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def rows(self) -> list[haproxy.ServerStats]:
        """The engine's server rows now; each worker's last counters kept, so totals survive reloads."""
        pid, rows = haproxy.stats(self.engine.stats_socket)
        if pid:
            mine: dict[str, tuple[int, int]] = {}
            for row in rows:
                if row.backend.startswith("host_"):
                    continue
                routed, retried = mine.get(row.host, (0, 0))
                mine[row.host] = (routed + row.routed, retried + row.retried)
            self.counted[pid] = mine
        return rows

    def totals(self) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for counts in self.counted.values():
            for host, (routed, retried) in counts.items():
                was = found.get(host, (0, 0))
                found[host] = (was[0] + routed, was[1] + retried)
        return found

    def run(self) -> None:
        while not self.stopping.is_set():
            for host in self.hosts:
                seen = _poll(host)
                if not seen.answered and self.seen[host.name].models:
                    seen.models = self.seen[host.name].models
                self.seen[host.name] = seen
            self.apply()
            self.keep_dashboard()
            self.wake.wait(self.engine.poll_s)
            self.wake.clear()

    def set_drained(self, name: str, drained: bool) -> dict[str, Any]:
        with self.lock:
            (self.drained.add if drained else self.drained.discard)(name)
            self.drained_file.write_text(json.dumps(sorted(self.drained)))
            # At once, in the running worker; the configuration says the same from the next reload on.
            state = "maint" if drained else "ready"
            haproxy.set_state(self.engine.stats_socket, haproxy.backends(self.applied), name, state)
            self.applied = haproxy.config(self.engine, self.hosts, self.routes(), self.drained)
            self.cfg.write_text(self.applied)
        return next(h for h in self.state()["hosts"] if h["name"] == name)

    def state(self) -> dict[str, Any]:
        """The lab as the gateway sees it (GET /gateway/state)."""
        rows = self.rows()
        totals = self.totals()
        hosts = []
        for host in self.hosts:
            mine = [r for r in rows if r.host == host.name]
            seen = self.seen[host.name]
            if host.name in self.drained:
                state = "drained"
            elif not seen.answered:
                state = "down"
            elif any(r.backend.startswith("host_") and r.status.startswith("DOWN") for r in mine):
                state = "cooling"
            else:
                state = "up"
            routed, retried = totals.get(host.name, (0, 0))
            hosts.append(
                {
                    "name": host.name,
                    "url": host.url,
                    "priority": host.priority,
                    "weight": host.weight,
                    "state": state,
                    "detail": seen.detail,
                    "models": [m["id"] for m in seen.models],
                    "loaded": [m["id"] for m in seen.models if m.get("state") == "loaded"],
                    "in_flight": sum(r.in_flight for r in mine if r.backend.startswith("host_")),
                    "routed": routed,
                    "retried": retried,
                }
            )
        engine_up = self.process is not None and self.process.poll() is None
        return {"engine": "haproxy", "engine_up": engine_up, "listen": self.engine.listen, "hosts": hosts}

    def models(self) -> dict[str, Any]:
        """The union of every answering host's /v1/models, first host's entry per id, with its hosts."""
        union: dict[str, dict[str, Any]] = {}
        for host in self.hosts:
            for model in self.seen[host.name].models if self.seen[host.name].answered else []:
                entry = union.setdefault(model["id"], {**model, "hosts": []})
                entry["hosts"].append(host.name)
        return {"object": "list", "data": list(union.values())}

    def ollama_models(self, path: str) -> dict[str, Any]:
        """Ollama's /api/tags or /api/ps for the lab: each answering host's own list, asked now (its
        sizes, digests and details are not in /v1/models), first host's entry per name."""
        hosts = [h for h in self.hosts if self.seen[h.name].answered]

        def listed(host: Host) -> list[Any]:
            try:
                return list(_get(host, path).get("models", []))
            except (OSError, ValueError, AttributeError):  # a host that fails now is left out
                return []

        union: dict[str, Any] = {}
        with ThreadPoolExecutor(max(len(hosts), 1)) as pool:
            for models in pool.map(listed, hosts):
                for model in models:
                    if isinstance(model, dict) and "name" in model:
                        union.setdefault(model["name"], model)
        return {"models": list(union.values())}

    def finish(self) -> None:
        """End the poll loop (on SIGTERM); `stop` follows in main."""
        self.stopping.set()
        self.wake.set()

    def stop(self) -> None:
        """SIGUSR1: HAProxy stops listening and exits once in-flight requests end (hard-stop-after)."""
        self.finish()
        if self.dashboard and self.dashboard.poll() is None:
            self.dashboard.terminate()  # uvicorn ends its open requests first
        with self.lock:
            if self.process and self.process.poll() is None:
                self.process.send_signal(signal.SIGUSR1)
                try:
                    self.process.wait(self.engine.stop_grace_s + 2)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        if self.dashboard:
            try:
                self.dashboard.wait(self.engine.stop_grace_s + 2)
            except subprocess.TimeoutExpired:
                self.dashboard.kill()
                self.dashboard.wait()
        if self.dashboard_socket:
            self.dashboard_socket.close()
            self.engine.dashboard_socket.unlink(missing_ok=True)


def _handler(controller: Controller) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Nothing per request: the log holds state changes, never a header."""

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _not_found(self, what: str) -> None:
            self._send(404, {"error": {"type": "not_found_error", "message": what, "code": 404}})

        def do_GET(self) -> None:
            if self.path == "/health":
                up = controller.process is not None and controller.process.poll() is None
                self._send(200 if up else 503, {"status": "ok" if up else "starting", "engine": "haproxy"})
            elif self.path == "/v1/models":
                self._send(200, controller.models())
            elif self.path.startswith("/v1/models/"):
                name = self.path.removeprefix("/v1/models/")
                found = [m for m in controller.models()["data"] if m["id"] == name]
                self._send(200, found[0]) if found else self._not_found(f"no host serves model '{name}'")
            elif self.path in {"/api/tags", "/api/ps"}:
                self._send(200, controller.ollama_models(self.path))
            elif self.path == "/gateway/state":
                self._send(200, controller.state())
            else:
                self._not_found(f"no such gateway path: {self.path}")

        def do_POST(self) -> None:
            parts = self.path.strip("/").split("/")
            names = {h.name for h in controller.hosts}
            if len(parts) == 4 and parts[:2] == ["gateway", "hosts"] and parts[3] in {"drain", "resume"}:
                if parts[2] not in names:
                    self._not_found(f"no host '{parts[2]}' behind this gateway (hosts: {sorted(names)})")
                else:
                    self._send(200, controller.set_drained(parts[2], parts[3] == "drain"))
            else:
                self._not_found(f"no such gateway path: {self.path}")

    return Handler


def _listening(path: Path) -> socket.socket:
    """A private unix socket, listening (HAProxy runs as the same user)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self) -> tuple[Any, Any]:
        conn, _ = self.socket.accept()
        return conn, ("control", 0)  # http.server wants an (address, port) pair


def read_plan(path: Path) -> tuple[Engine, list[Host]]:
    """The engine and hosts of the plan gateway.start wrote (the lab view's process reads it too)."""
    plan = json.loads(path.read_text())
    engine = Engine(**{**plan["engine"], "state_dir": Path(plan["engine"]["state_dir"])})
    return engine, [Host(**h) for h in plan["hosts"]]


def main(argv: list[str]) -> None:
    engine, hosts = read_plan(Path(argv[0]))
    controller = Controller(engine, hosts, Path(argv[0]))
    with contextlib.suppress(FileNotFoundError):
        engine.control_socket.unlink()
    server = _UnixServer(str(engine.control_socket), _handler(controller))
    os.chmod(engine.control_socket, 0o600)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: controller.finish())
    controller.keep_dashboard()
    print(f"gateway: {len(hosts)} hosts, listening on {engine.listen}", flush=True)
    try:
        controller.run()
    finally:
        controller.stop()
        server.shutdown()
        print(f"gateway: stopped at {time.strftime('%H:%M:%S')}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
