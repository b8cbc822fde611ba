"""Checks before any route runs: the Host header of a keyless server, and the size of a request body.

Without a key the server trusts whoever reaches it, which loopback makes "only this machine" — unless
a web page the user visits rebinds its own name to 127.0.0.1 and sends requests from the browser.
Such requests carry that page's name in `Host`, so a keyless server answers only the loopback names
in `server.allowed_hosts`. With a key, the key is the guard and any name is fine.

Bodies are bounded, so a 100 MB prompt is refused as it arrives instead of being buffered, parsed and
tokenised first.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference_server.errors import Kind, body_for_path, status_of
from inference_server.settings import ServerSettings

MAX_BODY_BYTES = 32 << 20  # Claude Code with a few screenshots stays well below this


class RequestGuard:
    def __init__(self, app: ASGIApp, settings: ServerSettings) -> None:
        self.app = app
        self.allowed = {name.lower() for name in settings.allowed_hosts}
        self.keyless = not settings.api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = host_name(headers.get("host", ""))
        if self.keyless and host not in self.allowed:
            message = (
                f"Host '{host}' is not answered without an API key: add it to server.allowed_hosts, "
                "or set server.api_key"
            )
            await _refuse(send, path, "invalid_request", message)
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _refuse(send, path, "too_large", _too_large(int(length)))
            return
        await self._bounded(scope, receive, send)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body without Content-Length (chunked) is counted as it arrives; going over the limit
        is an HTTPException, which FastAPI's body reading lets through to the error handlers."""
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY_BYTES:
                    raise HTTPException(413, _too_large(seen))
            return message

        await self.app(scope, counting_receive, send)


def host_name(host: str) -> str:
    """`Host` without its port: `127.0.0.1:8080` -> `127.0.0.1`, `[::1]:8080` -> `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _too_large(size: int) -> str:
    return f"request body is over {size - 1} bytes, more than the {MAX_BODY_BYTES} this server accepts"


async def _refuse(send: Send, path: str, kind: Kind, message: str) -> None:
    payload = json.dumps(body_for_path(kind, message, path)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status_of(kind),
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
