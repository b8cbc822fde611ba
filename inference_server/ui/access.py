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

COOKIE = "homelab_ui"
CSRF_HEADER = "x-csrf-token"


class Access:
    def __init__(self, api_key: str) -> None:
        self.api_key = api_key
        secret = api_key.encode() or secrets.token_bytes(32)
        self.session = _mac(secret, "session") if api_key else ""
        self.csrf = _mac(secret, "csrf")

    def allowed(self, request: Request) -> bool:
        if not self.api_key:
            return True
        if key := presented_key(request):
            return self.is_key(key)
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), self.session.encode())

    def is_key(self, key: str) -> bool:
        return bool(self.api_key) and hmac.compare_digest(key.encode(), self.api_key.encode())

    def refusal(self, request: Request) -> JSONResponse | None:
        """None when a data request may go on, else the error a client gets."""
        if not self.allowed(request):
            return refuse("authentication", "log in at /ui/login, or send the API key")
        return None

    def post_refusal(self, request: Request) -> JSONResponse | None:
        """As `refusal`, and the CSRF token must be there: an action only the page itself can send."""
        if refused := self.refusal(request):
            return refused
        token = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(token.encode(), self.csrf.encode()):
            message = f"missing or wrong {CSRF_HEADER}: send actions from the dashboard page"
            return refuse("forbidden", message)
        return None


def refuse(kind: Kind, message: str) -> JSONResponse:
    return JSONResponse(body(kind, message, anthropic=False), status_code=status_of(kind))


def _mac(secret: bytes, purpose: str) -> str:
    return hmac.new(secret, f"llm-homelab ui {purpose}".encode(), hashlib.sha256).hexdigest()
