"""The pages' frame: templates, security headers, the login form and the package's own assets.

`install(app, access, nav)` adds these to any app (the inference server's, fleet.dashboard's, the
gateway's); the views (`server`, `lab`) add their own routes beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from inference_server.ui.access import COOKIE, Access, Refused, on_refused

HERE = Path(__file__).parent
# No inline script or style, nothing from elsewhere: every asset comes from /ui/static.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
)

Nav = list[tuple[str, str]]  # (label, path)


def page(request: Request, access: Access, template: str, **context: Any) -> Response:
    """A rendered page, or the login form's address when the visitor has no key."""
    if not access.allowed(request):
        if not access.api_key:  # a keyless app asked by a name that is not its own: no login helps
            return HTMLResponse("This Host is not answered without an API key.", 400, headers=HEADERS)
        return RedirectResponse(f"/ui/login?next={request.url.path}", status_code=303, headers=HEADERS)
    nav: Nav = request.app.state.ui_nav
    html = _templates.get_template(template).render(
        csrf=access.csrf, nav=nav, here=request.url.path, keyed=bool(access.api_key), **context
    )
    return HTMLResponse(html, headers=HEADERS)


def install(app: FastAPI, access: Access, nav: Nav) -> None:
    """Login, logout and /ui/static on `app`; `nav[0]` is where /ui/ and a login lead."""
    app.state.ui_nav = nav
    app.add_exception_handler(Refused, on_refused)
    app.include_router(_router(access, nav[0][1]))
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")


def _router(access: Access, home: str) -> APIRouter:
    router = APIRouter(prefix="/ui", include_in_schema=False)

    @router.get("/login")
    async def login_form(request: Request, next: str = home, failed: bool = False) -> Response:
        html = _templates.get_template("login.html").render(
            next=_local(next, home), failed=failed, nav=[], here="", csrf="", keyed=True
        )
        return HTMLResponse(html, headers=HEADERS)

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        key, target = form.get("key", [""])[0], _local(form.get("next", [home])[0], home)
        if not access.is_key(key):
            return RedirectResponse(f"/ui/login?failed=true&next={target}", status_code=303, headers=HEADERS)
        response = RedirectResponse(target, status_code=303, headers=HEADERS)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, access.session, httponly=True, samesite="strict", secure=secure, path="/")
        return response

    @router.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/ui/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path="/")
        return response

    if home != "/ui/":

        @router.get("/")
        async def root() -> Response:
            return RedirectResponse(home, status_code=303)

    return router


def _local(target: str, home: str) -> str:
    """Only a path under /ui/ after logging in: never another site (an open redirect)."""
    return target if target.startswith("/ui/") and not target.startswith("//") else home
