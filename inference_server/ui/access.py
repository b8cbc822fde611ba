"""Who may use the dashboard, and which posts are the dashboard's own.

Off loopback the server has a key, and so do its pages: a login form trades the key for an HttpOnly,
SameSite=Strict cookie holding an HMAC of it (not the key itself). HttpOnly rather than the key in
the page's storage, because a script that ever ran in the page could read storage and take the key
away, while it cannot read this cookie; SameSite=Strict keeps other sites' pages from sending it.
The key as an API client sends it (header) is accepted too.

Every action is a POST that must carry the page's CSRF token in a header: a form on another site
cannot set headers, and a script there cannot read the token (no CORS). This holds for a keyless
loopback server too, whose secret is then random per process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request
from fastapi.responses import JSONResponse

from inference_server.auth import presented_key
from inference_server.errors import Kind, body, status_of
from inference_server.guard import host_name

COOKIE = "homelab_ui"
CSRF_HEADER = "x-csrf-token"


class Access:
    def __init__(self, api_key: str, allowed_hosts: list[str] | None = None) -> None:
        """`allowed_hosts`: the Host names a keyless app answers (None: a guard in front checks them)."""
        self.api_key = api_key
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        secret = api_key.encode() or secrets.token_bytes(32)
        self.session = _mac(secret, "session") if api_key else ""
        self.csrf = _mac(secret, "csrf")

    def allowed(self, request: Request) -> bool:
        if not self.api_key:
            hosts = self.allowed_hosts
            return hosts is None or host_name(request.headers.get("host", "")) in hosts
        if key := presented_key(request):
            return self.is_key(key)
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.session.encode())

    def is_key(self, key: str) -> bool:
        return bool(self.api_key) and hmac.compare_digest(key.encode(), self.api_key.encode())

    async def reader(self, request: Request) -> None:
        """A dependency of the data routes (it runs before the body is read)."""
        if self.allowed(request):
            return
        if not self.api_key:
            host = host_name(request.headers.get("host", ""))
            message = f"Host '{host}' is not answered without an API key: add it to server.allowed_hosts"
            raise Refused("invalid_request", message + ", or set server.api_key")
        raise Refused("authentication", "log in at /ui/login, or send the API key")

    async def actor(self, request: Request) -> None:
        """A dependency of the actions: a reader that also sends the page's CSRF token."""
        await self.reader(request)
        token = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(token.encode(), self.csrf.encode()):
            raise Refused(
                "forbidden", f"missing or wrong {CSRF_HEADER}: send actions from the dashboard page"
            )


class Refused(Exception):
    """A refused dashboard request, answered in the OpenAI error envelope by `on_refused`."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        self.message = message


async def on_refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refused)
    return JSONResponse(body(exc.kind, exc.message, anthropic=False), status_code=status_of(exc.kind))


def _mac(secret: bytes, purpose: str) -> str:
    return hmac.new(secret, f"llm-homelab ui {purpose}".encode(), hashlib.sha256).hexdigest()
