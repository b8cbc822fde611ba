"""The gateway in front of two real servers on the bundled model, standing in for two hosts.

Host `a` (priority 0) and host `b` (priority 1, which also serves the alias `only-b`) each have their own
key; clients use the gateway's. Through the official SDKs: routing by model name and by priority,
streams equal to direct ones, Ollama's list, chat and generate through the `ollama` client, the gateway
key checked, the lab view at the gateway's address (its login form, in httpx and in Chromium), host keys
kept out of logs and `gateway.config`, and last (it kills `a`): a host stopped mid-run loses no
non-streaming request, a started stream is not replayed, and the host takes traffic again once it is back.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from tasks.core import config, gateway, haproxy
from tests.fixtures.server import TIMEOUT, RunningServer, running_server, settings_for_test
from tests.ports import free_port

pytestmark = pytest.mark.skipif(not gateway._have_haproxy(), reason="haproxy is not installed")

GATEWAY_KEY = "gateway-key-123"
KEYS = {"a": "host-a-secret-key", "b": "host-b-secret-key"}
MODEL = "smollm2"
REQUESTS = 6  # non-streaming requests in the failover run


def _server(tmp: Path, name: str, **flags: Any) -> Any:
    settings = settings_for_test(api_key=KEYS[name], slots=2, context_size=2048, **flags)
    return running_server(tmp / f"server-{name}", settings)


class Lab:
    def __init__(self, tmp: Path, a: RunningServer, b: RunningServer) -> None:
        base = config.load()
        hosts = {
            name: config.HostSettings(host="127.0.0.1", url=s.url, api_key=KEYS[name], priority=i)
            for i, (name, s) in enumerate((("a", a), ("b", b)))
        }
        # A long probe interval: a failure is found by a request (and retried), not by the probe first.
        section = base.lab_gateway.model_copy(
            update={"port": free_port(), "state_dir": tmp / "gateway", "poll_s": 600.0, "cooldown_s": 1.0}
        )
        self.settings = base.model_copy(update={"hosts": hosts, "lab_gateway": section})
        self.engine = gateway.engine(self.settings, key=GATEWAY_KEY)
        self.url = gateway.start(self.settings, self.engine)
        self.a, self.b = a, b

    def hosts(self) -> dict[str, dict[str, Any]]:
        state = gateway.lab_state(self.settings)
        assert state is not None
        return {h["name"]: h for h in state["hosts"]}

    def openai(self, key: str = GATEWAY_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=TIMEOUT)

    def anthropic(self, key: str = GATEWAY_KEY) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url, api_key=key, max_retries=0, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("gateway")
    with _server(tmp, "a") as a, _server(tmp, "b", alias=["only-b=smollm2"]) as b:
        lab = Lab(tmp, a, b)
        try:
            yield lab
        finally:
            gateway.stop(lab.settings)


def _ask(client: openai.OpenAI, model: str = MODEL, max_tokens: int = 8) -> str:
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi."}], max_tokens=max_tokens, temperature=0
    )
    return answer.choices[0].message.content or ""


def test_models_are_the_union_of_the_hosts(lab: Lab) -> None:
    listed = {m.id: m for m in lab.openai().models.list()}
    assert {MODEL, "only-b"} <= set(listed)
    assert listed[MODEL].model_extra and listed[MODEL].model_extra["hosts"] == ["a", "b"]
    assert listed["only-b"].model_extra and listed["only-b"].model_extra["hosts"] == ["b"]


def test_ollama_client_lists_the_lab_s_models_and_chats_through_the_gateway(lab: Lab) -> None:
    """/api/tags and /api/ps are the union of the hosts' own (b's alias is only on b); /api/chat and
    /api/generate route by the body's model, to the host that serves it."""
    client = ollama.Client(host=lab.url, headers={"Authorization": f"Bearer {GATEWAY_KEY}"}, timeout=TIMEOUT)
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {m.id for m in lab.openai().models.list()} >= {MODEL, "only-b"}
    assert listed["only-b"].digest == listed[MODEL].digest and listed[MODEL].details is not None
    assert listed[MODEL].details.family == "llama"
    before = lab.hosts()
    answer = client.chat(
        model="only-b", messages=[{"role": "user", "content": "Say hi."}], options={"num_predict": 4}
    )
    assert answer.message.role == "assistant" and answer.message.content and answer.done
    generated = client.generate(model=MODEL, prompt="Hello", options={"num_predict": 4})
    assert generated.response and generated.done
    after = lab.hosts()
    assert after["b"]["routed"] - before["b"]["routed"] == 1  # only-b
    assert after["a"]["routed"] - before["a"]["routed"] == 1  # smollm2: the higher-priority host
    assert [m.model for m in client.ps().models] == [MODEL]  # loaded on both hosts, listed once
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=lab.url, headers={"Authorization": f"Bearer {KEYS['a']}"}).list()
    assert refused.value.status_code == 401


def test_higher_priority_host_gets_the_traffic_and_a_model_goes_where_it_is(lab: Lab) -> None:
    before = lab.hosts()
    for _ in range(3):
        assert _ask(lab.openai())
    claude = lab.anthropic()
    message = claude.messages.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Say hi."}]
    )
    assert message.type == "message" and message.stop_reason in {"end_turn", "max_tokens"}
    assert claude.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    ).input_tokens
    assert _ask(lab.openai(), model="only-b")
    after = lab.hosts()
    assert after["a"]["routed"] - before["a"]["routed"] == 5  # 3 chat + messages + count_tokens
    assert after["b"]["routed"] - before["b"]["routed"] == 1  # only-b
    assert after["a"]["state"] == after["b"]["state"] == "up"


def test_stream_through_the_gateway_matches_the_stream_direct(lab: Lab) -> None:
    def streamed(client: openai.OpenAI) -> list[str]:
        chunks = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name three colours."}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        return [c.choices[0].delta.content or "" for c in chunks if c.choices]

    direct = openai.OpenAI(base_url=f"{lab.a.url}/v1", api_key=KEYS["a"], max_retries=0, timeout=TIMEOUT)
    assert streamed(lab.openai()) == streamed(direct)


def test_a_wrong_gateway_key_is_401_in_each_api_s_envelope(lab: Lab) -> None:
    with pytest.raises(openai.AuthenticationError) as openai_error:
        _ask(lab.openai(key=KEYS["a"]))  # a host's key is not the gateway's
    assert openai_error.value.body and "gateway API key" in str(openai_error.value.body)
    with pytest.raises(anthropic.AuthenticationError) as anthropic_error:
        lab.anthropic(key="wrong").messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert anthropic_error.value.body and "gateway API key" in str(anthropic_error.value.body)


def test_the_lab_view_at_the_gateway_logs_in_with_its_key_and_shows_each_host(lab: Lab) -> None:
    """HAProxy passes /ui without the key (the login form is what sets it); the pages check it."""
    assert _ask(lab.openai())  # `a` has routed at least one request
    with httpx.Client(base_url=lab.url, timeout=TIMEOUT) as client:
        assert client.get("/ui/").headers["location"] == "/ui/lab"
        page = client.get("/ui/lab")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=/ui/lab"
        assert 'id="key"' in client.get(page.headers["location"]).text
        refused = client.get("/ui/api/lab")
        assert refused.status_code == 401 and "log in at /ui/login" in refused.text
        wrong = client.post("/ui/login", data={"key": KEYS["a"], "next": "/ui/lab"})
        assert "set-cookie" not in wrong.headers and "failed=true" in wrong.headers["location"]
        logged_in = client.post("/ui/login", data={"key": GATEWAY_KEY, "next": "/ui/lab"})
        assert logged_in.headers["location"] == "/ui/lab" and "HttpOnly" in logged_in.headers["set-cookie"]
        assert client.get("/ui/lab").status_code == 200
        shown = {h["name"]: h for h in client.get("/ui/api/lab").json()["hosts"]}
        assert client.get("/v1/models").status_code == 401  # the cookie opens the pages, not the API
    known = lab.hosts()
    assert set(shown) == {"a", "b"}
    for name in ("a", "b"):
        assert shown[name]["reachable"] and shown[name]["health"] == "ok"
        assert shown[name]["gateway"]["state"] == known[name]["state"] == "up"
        assert shown[name]["gateway"]["routed"] == known[name]["routed"]
    assert known["a"]["routed"] >= 1
    loaded = {m["name"]: m for m in shown["a"]["models"]}
    assert loaded[MODEL]["state"] == "loaded" and loaded[MODEL]["resident_bytes"]  # the host's own rows


def test_the_lab_page_at_the_gateway_shows_its_hosts_in_a_browser(lab: Lab) -> None:
    pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By

    from tests.fixtures.browser import chromium, console_errors, shot, until

    with chromium() as page:
        page.get(f"{lab.url}/ui/lab")
        until(page, lambda d: d.find_elements(By.ID, "key"))
        page.find_element(By.ID, "key").send_keys(GATEWAY_KEY)
        page.find_element(By.ID, "login").click()
        rows = until(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#gateway tbody tr"))
        assert isinstance(rows, list)
        cells = {row.text.split()[0]: row.text.split() for row in rows}
        assert cells["a"][:2] == ["a", "up"] and cells["b"][:2] == ["b", "up"], cells
        assert page.find_element(By.ID, "gateway-card").is_displayed()
        until(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#lab-models tbody tr"))
        shot(page, "gateway-lab")
        assert console_errors(page) == []


def test_host_keys_stay_out_of_logs_and_config_unless_revealed(lab: Lab) -> None:
    shown = gateway.config_text(lab.settings, lab.engine)
    revealed = gateway.config_text(lab.settings, lab.engine, reveal=True)
    log = gateway.files(lab.settings).log.read_text()
    for key in (*KEYS.values(), GATEWAY_KEY):
        assert key not in shown and key not in log
        assert key in revealed
    assert (lab.settings.lab_gateway.state_dir / "haproxy.cfg").stat().st_mode & 0o077 == 0


def test_drain_then_resume_moves_traffic_off_a_host_and_back(lab: Lab) -> None:
    assert "drained" in gateway.drain(lab.settings, "a")
    before = lab.hosts()
    assert _ask(lab.openai())
    drained = lab.hosts()
    assert drained["a"]["state"] == "drained"
    assert drained["b"]["routed"] - before["b"]["routed"] == 1
    assert "up" in gateway.resume(lab.settings, "a")
    assert _ask(lab.openai())
    assert lab.hosts()["a"]["routed"] >= 1


def test_a_host_killed_mid_run_loses_no_request_and_comes_back(lab: Lab, tmp_path: Path) -> None:
    """SIGTERM `a` once a stream through it has started, SIGKILL it once a request has finished: every
    non-streaming request succeeds (some retried on `b`), the stream ends in an error, not a replay."""
    stream = lab.openai().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count from 1 to 500, separated by commas."}],
        max_tokens=1500,
        temperature=0,
        stream=True,
    )
    first = next(iter(stream))  # the stream has started on `a`
    assert first.choices is not None
    one_done = threading.Event()

    def request(_: int) -> str:
        try:
            return _ask(lab.openai(), max_tokens=16)
        finally:
            one_done.set()

    with ThreadPoolExecutor(REQUESTS) as pool:
        answers = pool.map(request, range(REQUESTS))
        os.kill(lab.a.pid, signal.SIGTERM)
        assert one_done.wait(TIMEOUT)
        os.kill(lab.a.pid, signal.SIGKILL)
        assert all(answers)
    with pytest.raises((openai.APIError, Exception)):  # the stream is cut, never replayed
        for _ in stream:
            pass
    hosts = lab.hosts()
    assert hosts["a"]["retried"] >= 1
    assert hosts["a"]["state"] in {"cooling", "down"}
    # Back on its port: after the cool-down its probe passes and it takes the traffic again.
    port = int(lab.a.url.rsplit(":", 1)[1])
    with _server(tmp_path, "a", port=port):
        deadline_polls = 600
        while lab.hosts()["a"]["state"] != "up" and deadline_polls:
            threading.Event().wait(0.1)  # HAProxy's probe, every cooldown_s, is the signal here
            deadline_polls -= 1
        assert lab.hosts()["a"]["state"] == "up"
        before = lab.hosts()["a"]["routed"]
        assert _ask(lab.openai())
        assert lab.hosts()["a"]["routed"] == before + 1


def test_drain_without_a_gateway_is_a_no_op_that_says_so(tmp_path: Path) -> None:
    base = config.load()
    settings = base.model_copy(
        update={"lab_gateway": base.lab_gateway.model_copy(update={"state_dir": tmp_path / "none"})}
    )
    assert gateway.drain(settings, "a") == "no gateway running here: nothing to drain for a"
    assert gateway.lab_state(settings) is None
    assert "drained" not in haproxy.config(gateway.engine(settings), [], {}, set())
