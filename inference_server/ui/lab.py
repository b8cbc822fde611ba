"""The whole lab's view (/ui/lab): every host's facts and models, from one `LabSource`.

A source is any blocking callable returning the hosts (it is called off the event loop, once per
page refresh): fleet.dashboard's asks each host over ssh and HTTP; a gateway's may ask its backends.
Actions (load, pin, unload a model; restart a host's server) go through `LabActions` in the same way:
blocking calls, run off the event loop, each answering one line and the host as it is now.

The actions are offered only when the app has a key: they run with the owner's ssh access, which
reaches hosts whose own servers may want a key, so a keyless loopback view (which any local process
can ask) stays read-only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from inference_server.ui import site
from inference_server.ui.access import Access, Refused
from inference_server.ui.site import page


@dataclass(frozen=True)
class GatewayView:
    """What the gateway in front of a host knows of it (GET /gateway/state's row): its lab view only."""

    state: str  # up, cooling (failed a request, probed again after the cool-down), down, drained
    priority: int = 0
    weight: int = 1
    in_flight: int = 0
    routed: int = 0
    retried: int = 0
    detail: str = ""  # what the last poll of the host found


@dataclass(frozen=True)
class HostView:
    name: str
    reachable: bool
    revision: str = ""
    server: str = ""  # "running (pid N)", "stopped", ...
    health: str = ""  # "ok", "down", "unhealthy (503)"
    engine: str = ""
    memory_free_gb: float | None = None
    disk_free_gb: float | None = None
    # Rows in the shape of GET /admin/models' "models" (name, state, pinned, resident_bytes, ...).
    models: list[dict[str, object]] = field(default_factory=list)
    problem: str = ""
    gateway: GatewayView | None = None


LabSource = Callable[[], list[HostView]]


@dataclass(frozen=True)
class ActionDone:
    """How an action went: one line (the task's own last line, or why it failed) and the host now."""

    ok: bool
    message: str
    host: HostView


class UnknownHost(LookupError):
    """An action named a host the view does not show; its message says which hosts it does."""


class LabActions(Protocol):
    """What the lab view's buttons do, each a blocking call (run off the event loop)."""

    def load(self, host: str, model: str, pin: bool) -> ActionDone: ...

    def unload(self, host: str, model: str) -> ActionDone: ...

    def restart(self, host: str) -> ActionDone: ...


def router(access: Access, source: LabSource, actions: LabActions | None = None) -> APIRouter:
    routes = APIRouter(prefix="/ui", include_in_schema=False)
    acting = actions is not None and bool(access.api_key)

    @routes.get("/lab")
    async def lab_page(request: Request) -> Response:
        return page(request, access, "lab.html", acting=acting, offered=actions is not None)

    @routes.get("/api/lab", dependencies=[Depends(access.reader)])
    async def hosts() -> dict[str, object]:
        return {"hosts": [asdict(host) for host in await asyncio.to_thread(source)]}

    if actions is None:
        return routes
    act: LabActions = actions  # narrowed for the routes below
    busy: set[str] = set()  # hosts with an action running: one at a time each (two tabs, one host)

    async def done(host: str, call: Callable[[], ActionDone]) -> dict[str, object]:
        if not acting:
            raise Refused("forbidden", "the lab view acts only with a key: set server.api_key and log in")
        if host in busy:
            raise Refused("busy", f"an action on {host} is still running: try again when it has ended")
        busy.add(host)
        try:
            return asdict(await asyncio.to_thread(call))
        except UnknownHost as exc:
            raise Refused("no_route", str(exc)) from None
        finally:
            busy.discard(host)

    @routes.post("/api/lab/hosts/{host}/models/{name:path}/{action}", dependencies=[Depends(access.actor)])
    async def model_action(
        host: str, name: str, action: Literal["load", "pin", "unload"]
    ) -> dict[str, object]:
        if action == "unload":
            return await done(host, lambda: act.unload(host, name))
        return await done(host, lambda: act.load(host, name, pin=action == "pin"))

    @routes.post("/api/lab/hosts/{host}/restart", dependencies=[Depends(access.actor)])
    async def restart(host: str) -> dict[str, object]:
        return await done(host, lambda: act.restart(host))

    return routes


def create_app(
    source: LabSource, api_key: str, allowed_hosts: list[str], actions: LabActions | None = None
) -> FastAPI:
    """The lab view on its own (fleet.dashboard): behind `api_key` when it is set, else answering only
    the loopback names in `allowed_hosts` (the server's guard against DNS rebinding) and read-only."""
    app = FastAPI(title="llm-homelab dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    access = Access(api_key, allowed_hosts)
    site.install(app, access, [("Lab", "/ui/lab")])
    app.include_router(router(access, source, actions))
    return app
