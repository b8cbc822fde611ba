"""The whole lab's view (/ui/lab): every host's facts and models, from one `LabSource`.

A source is any blocking callable returning the hosts (it is called off the event loop, once per
page refresh): fleet.dashboard's asks each host over ssh and HTTP; a gateway's may ask its backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from inference_server.ui import site
from inference_server.ui.access import Access
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


def router(access: Access, source: LabSource) -> APIRouter:
    routes = APIRouter(prefix="/ui", include_in_schema=False)

    @routes.get("/lab")
    async def lab_page(request: Request) -> Response:
        return page(request, access, "lab.html")

    @routes.get("/api/lab", dependencies=[Depends(access.reader)])
    async def hosts() -> dict[str, object]:
        return {"hosts": [asdict(host) for host in await asyncio.to_thread(source)]}

    return routes


def create_app(source: LabSource, api_key: str, allowed_hosts: list[str]) -> FastAPI:
    """The lab view on its own (fleet.dashboard): behind `api_key` when it is set, else answering only
    the loopback names in `allowed_hosts` (the server's guard against DNS rebinding)."""
    app = FastAPI(title="llm-homelab dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    access = Access(api_key, allowed_hosts)
    site.install(app, access, [("Lab", "/ui/lab")])
    app.include_router(router(access, source))
    return app
