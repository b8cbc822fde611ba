"""The gateway's lab view: inference_server.ui's /ui/lab, fed by what the gateway knows, at its address.

The controller (stdlib only) runs this beside HAProxy, which routes /ui there without checking the
gateway key: the view checks it itself (inference_server.ui.access), so its login form can set the
cookie. On every refresh (10 s) the source asks the controller for /gateway/state and each host that
answers for its /health and /admin/models (the host's own key, over HTTP, in parallel): a few cheap
requests. Revision and free memory and disk need ssh (a `remote.facts` per host), too dear every
10 s: those stay with `inv fleet.dashboard`.

Run: `python -m tasks.core.gateway_dashboard PLAN.json FD` (by the controller, which listens on FD, the
unix socket HAProxy connects to; it dies with the controller).
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core import fleet, gateway, server, server_state
from tasks.core.errors import HomelabError
from tasks.core.gateway_controller import read_plan
from tasks.core.haproxy import Engine, Host

if TYPE_CHECKING:
    from inference_server.ui.lab import HostView, LabSource

HOST_TIMEOUT_S = 3.0


def host_view(host: Host, row: dict[str, Any]) -> HostView:
    """One host: the controller's row of /gateway/state, and the host's own answers when it is up."""
    from inference_server.ui.lab import GatewayView, HostView

    keys = ("state", "priority", "weight", "in_flight", "routed", "retried", "detail")
    seen = GatewayView(**{k: row[k] for k in keys})
    listed: list[dict[str, object]] = [
        {"name": m, "state": "loaded" if m in row["loaded"] else "unloaded"} for m in row["models"]
    ]
    if row["state"] == "down":
        return HostView(host.name, False, models=listed, problem=row["detail"], gateway=seen)
    answer = server_state.health(host.url, timeout_s=HOST_TIMEOUT_S)
    try:
        models = server.admin_rows(server_state.Endpoint(host.url, host.api_key, ""), HOST_TIMEOUT_S)
    except HomelabError:
        models = listed  # what the gateway's last poll saw
    return HostView(
        host.name,
        True,
        health="ok" if answer.ok else f"unhealthy ({answer.code})" if answer.code else "down",
        engine=str(answer.body.get("engine") or ""),
        models=models,
        gateway=seen,
    )


def lab_source(engine: Engine, hosts: list[Host]) -> LabSource:
    named = {h.name: h for h in hosts}

    def views() -> list[HostView]:
        from inference_server.ui.lab import HostView

        try:
            rows = gateway.control(engine.control_socket, "GET", "/gateway/state")["hosts"]
        except HomelabError as exc:
            return [HostView(h.name, False, problem=exc.message) for h in hosts]
        return fleet.in_parallel(rows, lambda row: host_view(named[row["name"]], row))

    return views


def main(argv: list[str]) -> None:
    import uvicorn

    from inference_server.ui.lab import create_app

    engine, hosts = read_plan(Path(argv[0]))
    allowed_hosts = json.loads(Path(argv[0]).read_text())["allowed_hosts"]
    app = create_app(lab_source(engine, hosts), engine.api_key, allowed_hosts)
    with socket.socket(fileno=int(argv[1])) as sock:  # the controller's, listening already
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
