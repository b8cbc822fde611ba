"""This server's view: models, load and recent requests (/ui/), and a chat page (/ui/chat).

Reads are GETs; the actions and the chat are POSTs carrying the page's CSRF token, and they call the
admin API's and the OpenAI API's own handlers, so the page does nothing an API client cannot.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from inference_server.admin import api_router as admin
from inference_server.openai import protocol as p
from inference_server.openai.serving import OpenAIServing
from inference_server.runtime import Runtime
from inference_server.streaming import EventStream
from inference_server.ui.access import Access
from inference_server.ui.recent import History
from inference_server.ui.site import page

NAV = [("Models & load", "/ui/"), ("Chat", "/ui/chat")]


def router(access: Access) -> APIRouter:
    routes = APIRouter(prefix="/ui", include_in_schema=False)

    @routes.get("/")
    async def dashboard(request: Request) -> Response:
        return page(request, access, "dashboard.html")

    @routes.get("/chat")
    async def chat_page(request: Request) -> Response:
        state: Runtime = request.app.state.runtime
        names = [n for n in state.pool.listed_names() if state.pool.route(n).spec.kind == "chat"]
        return page(request, access, "chat.html", models=names, default=state.settings.default_model)

    @routes.get("/api/state", dependencies=[Depends(access.reader)])
    async def snapshot(request: Request) -> dict[str, object]:
        state: Runtime = request.app.state.runtime
        history: History = request.app.state.ui_history
        return {
            **await admin.admin_models(state),
            "history": history.listed(),
            "requests": state.recent.listed(),
            "prompt_text": state.settings.ui_prompt_text,
        }

    @routes.post("/api/models/{name:path}/{action}", dependencies=[Depends(access.actor)])
    async def act(request: Request, name: str, action: Literal["load", "pin", "unload"]) -> dict[str, object]:
        state: Runtime = request.app.state.runtime
        if action == "unload":
            return await admin.unload(state, name)
        return await admin.load(state, name, pin=action == "pin")

    @routes.post("/api/chat", response_model=None, dependencies=[Depends(access.actor)])
    async def chat(request: Request, body: p.ChatCompletionRequest) -> p.ChatCompletion | EventStream:
        return await OpenAIServing(request.app.state.runtime).chat(request, body)

    return routes
