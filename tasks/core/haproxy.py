"""The gateway's routing engine, HAProxy: its configuration from the lab's state, and its counters.

Why HAProxy: it reads the `model` out of a buffered JSON body (`json_query`), retries a request that
failed before its first byte on another server (`retry-on`, `redispatch`), cools a failing server down
(`observe layer7` marks it down, a health probe after `downinter` brings it back), balances by least
connections and weight, and reloads seamlessly (old workers finish their requests). Measured
(tests/bench/bench_gateway.py, README "Gateway"): +5–9 ms TTFT p50 at 1 stream, where LiteLLM's proxy,
the other candidate, adds 16–22 ms and re-encodes every chunk in Python.

Each host gets a small inner `listen` on a unix socket that sets the host's own key and Host header:
HAProxy picks a server after its header rules run, so a per-server key needs that hop. Standard
library only: the controller process imports this, never a task.
"""

from __future__ import annotations

import json
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CONTROL = "control"  # the backend of the controller: /health, /v1/models, /api/tags|ps, /gateway/*
DASHBOARD = "dashboard"  # the lab view's process (tasks.core.gateway_dashboard): /ui and /ui/*
ANYWHERE = "anywhere"  # a model no host lists (an alias pattern, say): every host, by priority


@dataclass(frozen=True)
class Host:
    """One host's server as the gateway reaches it."""

    name: str
    url: str
    api_key: str
    priority: int
    weight: int

    @property
    def address(self) -> str:
        """host:port of the URL (http only: servers on a homelab LAN)."""
        where = urllib.parse.urlsplit(self.url)
        host = f"[{where.hostname}]" if ":" in (where.hostname or "") else where.hostname
        return f"{host}:{where.port or 80}"


@dataclass(frozen=True)
class Route:
    """A host in one model's backend: `loaded` ranks it before hosts that would have to load it."""

    host: Host
    loaded: bool
    drained: bool

    @property
    def rank(self) -> tuple[int, int]:
        return (0 if self.loaded else 1, self.host.priority)


@dataclass(frozen=True)
class Engine:
    """Where the engine listens and how it behaves (from invoke.yaml's gateway section)."""

    listen: str
    api_key: str
    state_dir: Path
    poll_s: float
    cooldown_s: float
    retries: int
    max_body_bytes: int
    stop_grace_s: float

    @property
    def stats_socket(self) -> Path:
        return self.state_dir / "haproxy.sock"

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def dashboard_socket(self) -> Path:
        return self.state_dir / "dashboard.sock"

    def host_socket(self, host: Host) -> Path:
        return self.state_dir / f"host-{host.name}.sock"


def _quoted(text: str) -> str:
    """A string HAProxy reads back as `text` (inside double quotes only \\ and " are special)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _error(status: int, kind: str, message: str, anthropic: bool) -> str:
    """The body of an error the gateway itself answers, in the API's own envelope."""
    if anthropic:
        body = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {"error": {"type": kind, "message": message, "code": status}}
    return json.dumps(body)


def _returns(status: int, kind: str, message: str, condition: str) -> list[str]:
    """`http-request return` lines: Anthropic's envelope under /v1/messages, OpenAI's elsewhere."""
    lines = []
    for anthropic, where in ((True, "{ path_beg /v1/messages }"), (False, "!{ path_beg /v1/messages }")):
        body = _quoted(_error(status, kind, message, anthropic))
        lines.append(
            f"    http-request return status {status} content-type application/json string {body} "
            f"if {condition} {where}"
        )
    return lines


def config(engine: Engine, hosts: list[Host], routes: dict[str, list[Route]], drained: set[str]) -> str:
    """The whole HAProxy configuration: one frontend, a backend per model, one per-host key hop."""
    lines = [
        "global",
        f"    stats socket {engine.stats_socket} mode 600 level admin",
        f"    tune.bufsize {engine.max_body_bytes + 65536}",
        f"    hard-stop-after {engine.stop_grace_s:g}s",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 10m",
        "    timeout server 10m",
        "    timeout http-request 60s",
        "    timeout queue 60s",
        "    option http-buffer-request",
        "    option http-no-delay",  # no MSG_MORE: a streamed token leaves at once, not ~200 ms later
        "    option redispatch 1",
        f"    retries {engine.retries}",
        "    retry-on conn-failure empty-response junk-response response-timeout 500 502 503 504",
        "",
        "frontend gateway",
        f"    bind {engine.listen}",
        "    acl health path /health",
        # The pages check the gateway key themselves: their login form is what sets it (as a cookie).
        "    acl dashboard path /ui",
        "    acl dashboard path_beg /ui/",
    ]
    if engine.api_key:
        lines += [
            f"    acl key_ok req.hdr(authorization) -m str {_quoted('Bearer ' + engine.api_key)}",
            f"    acl key_ok req.hdr(x-api-key) -m str {_quoted(engine.api_key)}",
            *_returns(
                401, "authentication_error", "wrong or missing gateway API key", "!health !dashboard !key_ok"
            ),
        ]
    lines += [
        f"    use_backend {DASHBOARD} if dashboard",
        "    use_backend control if health || { path /v1/models } || { path_beg /v1/models/ }"
        " || { path /api/tags } || { path /api/ps } || { path_beg /gateway/ }",
        "    http-request set-var(txn.model) req.body,json_query('$.model') if METH_POST",
    ]
    names = sorted(routes)
    for index, name in enumerate(names):
        lines.append(f"    use_backend model_{index} if {{ var(txn.model) -m str {_quoted(name)} }}")
    lines += [f"    default_backend {ANYWHERE}", ""]
    everywhere = [Route(host, False, host.name in drained) for host in hosts]
    backends = [(f"model_{i}", routes[name]) for i, name in enumerate(names)] + [(ANYWHERE, everywhere)]
    for backend, chosen in backends:
        lines += _backend(engine, backend, chosen)
    lines += [
        f"backend {CONTROL}",
        f"    server controller unix@{engine.control_socket}",
        "",
        f"backend {DASHBOARD}",
        f"    server pages unix@{engine.dashboard_socket}",
        "",
    ]
    for host in hosts:
        lines += _key_hop(engine, host)
    return "\n".join(lines) + "\n"


def _backend(engine: Engine, name: str, routes: list[Route]) -> list[str]:
    """The best-ranked hosts first: least connections (and weight) among several, the rest backups.

    With one best host every host is active under `balance first` instead: a retry then avoids the
    server that failed and takes the next in rank, where a backup would wait for the failed one to
    be marked down (HAProxy does that in its check task, after the retries have gone)."""
    ordered = sorted(routes, key=lambda r: (r.drained, r.rank))
    best = min((r.rank for r in routes if not r.drained), default=None)
    tiered = sum(1 for r in routes if not r.drained and r.rank == best) > 1
    lines = [
        f"backend {name}",
        f"    balance {'leastconn' if tiered else 'first'}",
        *_returns(503, "overloaded_error", "no host can serve this model now", "{ nbsrv() lt 1 }"),
    ]
    for number, route in enumerate(ordered, start=1):
        host = route.host
        place = f"unix@{engine.host_socket(host)} id {number} weight {host.weight}"
        place += f" track host_{host.name}/{host.name}"
        if route.drained:  # no new requests; those in flight finish in the worker that took them
            place += " disabled"
        elif tiered and route.rank != best:
            place += " backup"
        lines.append(f"    server {route.host.name} {place}")
    return [*lines, ""]


def _key_hop(engine: Engine, host: Host) -> list[str]:
    """The host's own key and Host header, set on the way to it (clients' keys never reach a host)."""
    """Its probe and cool-down live here too, once per host, and every model backend tracks them: a
    failed request (connect error, 5xx, 503 queue full) marks the host down at once, the probe brings
    it back after lab_gateway.cooldown_s."""
    lines = [
        f"listen host_{host.name}",
        f"    bind unix@{engine.host_socket(host)} mode 600",
        "    retries 0",
        "    retry-on none",
        "    option httpchk GET /health",
        "    http-check expect status 200",
        "    http-request del-header authorization",
        "    http-request del-header x-api-key",
        f"    http-request set-header Host {host.address}",
    ]
    if host.api_key:
        lines += [
            f"    http-request set-header Authorization {_quoted('Bearer ' + host.api_key)}",
            f"    http-request set-header x-api-key {_quoted(host.api_key)}",
        ]
    check = (
        f"check inter {engine.poll_s:g}s downinter {engine.cooldown_s:g}s fastinter {engine.cooldown_s:g}s"
        " rise 1 fall 1 observe layer7 error-limit 1 on-error mark-down"
    )
    return [*lines, f"    server {host.name} {host.address} {check}", ""]


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every key in it replaced (gateway.config without --reveal)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


@dataclass(frozen=True)
class ServerStats:
    """One host in one backend, from `show stat`."""

    backend: str  # model_N or anywhere (counters), host_NAME (the host's probe: its status)
    host: str
    status: str  # UP, DOWN, MAINT, no check ...
    in_flight: int
    routed: int
    retried: int


def _command(stats_socket: Path, command: str, timeout_s: float = 3.0) -> str:
    """One line to HAProxy's runtime API and its answer; '' when it does not answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(stats_socket))
            s.sendall(command.encode() + b"\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return ""
    return data.decode(errors="replace")


def stats(stats_socket: Path) -> tuple[int, list[ServerStats]]:
    """The pid of the worker that answered (counters are per worker: a reload starts new ones) and every
    server row of every model backend; (0, []) when the engine does not answer."""
    answer = _command(stats_socket, "show info;show stat")
    pid = next((int(v) for k, _, v in (x.partition(": ") for x in answer.splitlines()) if k == "Pid"), 0)
    lines = answer[answer.find("# pxname") :].splitlines() if "# pxname" in answer else []
    if not lines:
        return 0, []
    header = lines[0][2:].split(",")
    rows = []
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        backend = row.get("pxname", "")
        if row.get("svname") in {"FRONTEND", "BACKEND"} or not (
            backend.startswith(("model_", "host_")) or backend == ANYWHERE
        ):
            continue
        rows.append(
            ServerStats(
                backend,
                row["svname"],
                row.get("status", ""),
                int(row.get("scur") or 0),
                int(row.get("stot") or 0),
                int(row.get("wretr") or 0) + int(row.get("wredis") or 0),
            )
        )
    return pid, rows


def set_state(stats_socket: Path, backends: list[str], host: str, state: str) -> None:
    """`ready` or `maint` for `host` in each backend, at once (maint: in-flight requests finish)."""
    if backends:
        _command(stats_socket, ";".join(f"set server {b}/{host} state {state}" for b in backends))


def backends(text: str) -> list[str]:
    """The model backends of a generated configuration."""
    named = [line.split()[1] for line in text.splitlines() if line.startswith("backend ")]
    return [name for name in named if name.startswith("model_") or name == ANYWHERE]
