"""The dashboard's own checks, on the lab view's real app (fleet.dashboard's) with no server behind it:
the key or the login cookie for reads, the CSRF token for actions, the Host names of a keyless app
and that its actions stay off."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from inference_server.ui import lab
from inference_server.ui.access import COOKIE, CSRF_HEADER, Access, Refused
from tasks.core import config, dashboard

pytestmark = pytest.mark.unit
HOSTS = [lab.HostView("a", True, revision="abc123", health="ok", disk_free_gb=12.5)]
LOOPBACK = ["localhost", "127.0.0.1", "::1"]


def csrf_of(page: str) -> str:
    """The CSRF token a page carries for its actions."""
    return page.split('name="csrf" content="')[1].split('"')[0]


def app(key: str) -> TestClient:
    return TestClient(lab.create_app(lambda: HOSTS, key, LOOPBACK), base_url="http://127.0.0.1")


def test_a_keyed_lab_view_asks_for_the_key_and_then_keeps_a_cookie_that_is_not_it() -> None:
    client = app("secret")
    assert client.get("/ui/api/lab").status_code == 401
    page = client.get("/ui/lab", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=/ui/lab"
    assert client.post("/ui/login", data={"key": "nope"}, follow_redirects=False).cookies.get(COOKIE) is None
    logged_in = client.post("/ui/login", data={"key": "secret", "next": "/ui/lab"}, follow_redirects=False)
    assert logged_in.headers["location"] == "/ui/lab"
    assert logged_in.cookies[COOKIE] not in ("", "secret")
    assert client.get("/ui/api/lab").json()["hosts"][0]["revision"] == "abc123"
    shown = client.get("/ui/lab")
    assert "'unsafe-inline'" not in shown.headers["content-security-policy"]
    assert "<script>" not in shown.text and " style=" not in shown.text  # no inline script or style


def test_the_key_in_a_header_reads_as_api_clients_send_it() -> None:
    client = app("secret")
    assert client.get("/ui/api/lab", headers={"authorization": "Bearer secret"}).status_code == 200
    assert client.get("/ui/api/lab", headers={"x-api-key": "wrong"}).status_code == 401


def test_a_keyless_lab_view_answers_only_its_loopback_names() -> None:
    client = app("")
    assert client.get("/ui/api/lab").status_code == 200
    rebound = client.get("/ui/api/lab", headers={"host": "evil.example:8089"})
    assert rebound.status_code == 400
    assert "Host 'evil.example' is not answered" in rebound.json()["error"]["message"]
    assert client.get("/ui/lab", headers={"host": "evil.example"}).status_code == 400


def test_actions_need_the_pages_csrf_token_keyless_too() -> None:
    access = Access("", None)
    scope = {"type": "http", "headers": [], "method": "POST", "path": "/ui/api/x"}
    with pytest.raises(Refused, match=CSRF_HEADER):
        asyncio.run(access.actor(Request(scope)))
    token = access.csrf.encode()
    asyncio.run(access.actor(Request({**scope, "headers": [(CSRF_HEADER.encode(), token)]})))
    assert Access("", None).csrf != access.csrf  # a keyless app's secret is its own, per process


def acting_app(key: str) -> TestClient:
    """The lab view with fleet.dashboard's real actions, over an inventory of no hosts."""
    settings = config.load()
    actions = dashboard.LabTasks(None, settings, [])
    return TestClient(lab.create_app(lambda: HOSTS, key, LOOPBACK, actions), base_url="http://127.0.0.1")


def test_a_keyless_lab_view_is_read_only_and_says_how_to_act() -> None:
    client = acting_app("")
    shown = client.get("/ui/lab")
    assert 'data-acting="yes"' not in shown.text and "need a key: set server.api_key" in shown.text
    token = csrf_of(shown.text)
    refused = client.post("/ui/api/lab/hosts/a/restart", headers={CSRF_HEADER: token})
    assert refused.status_code == 403
    assert refused.json()["error"]["message"].startswith("the lab view acts only with a key")


def test_a_keyed_lab_view_acts_only_on_its_own_hosts() -> None:
    client = acting_app("secret")
    client.post("/ui/login", data={"key": "secret"})
    shown = client.get("/ui/lab")
    assert 'data-acting="yes"' in shown.text
    token = csrf_of(shown.text)
    assert client.post("/ui/api/lab/hosts/a/restart").status_code == 403  # no CSRF token
    unknown = client.post("/ui/api/lab/hosts/elsewhere/models/smollm2/load", headers={CSRF_HEADER: token})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"].startswith("no host 'elsewhere' in this dashboard")


class HeldRestart:
    """Lab actions whose restart waits for the test to let it end (the real ones are tested over SSH
    in test_fleet_ssh; this is about the view running one action per host at a time)."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def load(self, host: str, model: str, pin: bool) -> lab.ActionDone:
        return lab.ActionDone(True, f"loaded {model}", HOSTS[0])

    def unload(self, host: str, model: str) -> lab.ActionDone:
        return lab.ActionDone(True, f"unloaded {model}", HOSTS[0])

    def restart(self, host: str) -> lab.ActionDone:
        self.started.set()
        assert self.release.wait(30), "the test never let the restart end"
        return lab.ActionDone(True, "restarted", HOSTS[0])


def test_a_host_runs_one_action_at_a_time_and_says_so_to_the_second() -> None:
    actions = HeldRestart()
    with TestClient(
        lab.create_app(lambda: HOSTS, "secret", LOOPBACK, actions), base_url="http://127.0.0.1"
    ) as client:
        client.post("/ui/login", data={"key": "secret"})
        token = csrf_of(client.get("/ui/lab").text)
        post = lambda path: client.post(path, headers={CSRF_HEADER: token})  # noqa: E731
        with ThreadPoolExecutor(1) as pool:
            restart = pool.submit(post, "/ui/api/lab/hosts/a/restart")
            assert actions.started.wait(30)
            second = post("/ui/api/lab/hosts/a/models/smollm2/load")
            actions.release.set()
            assert restart.result(30).json()["message"] == "restarted"
        assert second.status_code == 409
        assert second.json()["error"]["message"] == (
            "an action on a is still running: try again when it has ended"
        )
        assert post("/ui/api/lab/hosts/a/models/smollm2/load").json()["message"] == "loaded smollm2"
