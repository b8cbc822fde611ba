"""The dashboard in a real browser (tests.fixtures.browser: headless Chromium from Debian, driven by
Selenium) against a real server on the two bundled models. Every wait is on the page's DOM; each page's
screenshot goes to tests/artifacts/dashboard/ (gitignored)."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_server.ui import lab
from tasks.core import config, dashboard, fleet
from tests.e2e.test_server_lifecycle import inv
from tests.fixtures.server import RunningServer, running_server, settings_for_test
from tests.fixtures.sshd import Lab, cli, fleet_dashboard

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL, OTHER = "smollm2", "gemma3"

pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

from tests.fixtures.browser import chromium, console_errors, shot, until  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = settings_for_test(models=f"{SMALL},{OTHER}", context_size=2048, slots=2)
    with running_server(tmp_path_factory.mktemp("dashboard"), settings) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    with chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def page(browser: WebDriver, server: RunningServer) -> WebDriver:
    """The browser, logged in through the form (the server has a key, as off loopback it must)."""
    browser.get(f"{server.url}/ui/")
    until(browser, lambda d: d.find_elements(By.ID, "key"))
    browser.find_element(By.ID, "key").send_keys("not-the-key")
    browser.find_element(By.ID, "login").click()
    until(browser, lambda d: d.find_elements(By.ID, "login-failed"))
    shot(browser, "login")
    browser.find_element(By.ID, "key").send_keys(server.api_key)
    browser.find_element(By.ID, "login").click()
    until(browser, lambda d: d.find_elements(By.ID, "models"))
    assert browser.current_url == f"{server.url}/ui/"
    console_errors(browser)  # the wrong key's redirect is no page error: start the count here
    return browser


def model_row(state: str, name: str) -> str:
    return f'#models tr[data-model="{name}"][data-state="{state}"]'


def test_without_the_key_the_pages_and_their_data_refuse(server: RunningServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        page = client.get("/ui/")
        assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=/ui/"
        assert client.get("/ui/chat").status_code == 303
        state = client.get("/ui/api/state")
        assert state.status_code == 401
        assert "log in at /ui/login" in state.json()["error"]["message"]
        assert client.post(f"/ui/api/models/{OTHER}/load").status_code == 401
        assert client.post("/ui/api/chat", json={"model": SMALL, "messages": []}).status_code == 401
        bad_login = client.post("/ui/login", data={"key": "wrong", "next": "/ui/"})
        assert "set-cookie" not in bad_login.headers
        logged_in = client.post("/ui/login", data={"key": server.api_key, "next": "https://evil.example/"})
        cookie = logged_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and server.api_key not in cookie
        assert logged_in.headers["location"] == "/ui/"  # never a redirect off the site
        assert client.get("/ui/api/state").status_code == 200  # the cookie is the key now
        refused = client.post(f"/ui/api/models/{OTHER}/load")  # but an action needs the page's token
        assert refused.status_code == 403 and "x-csrf-token" in refused.json()["error"]["message"]


def test_dashboard_loads_without_console_errors_and_shows_the_loaded_model(page: WebDriver) -> None:
    csp = httpx.get(page.current_url, headers={"authorization": "Bearer test-key"}).headers
    assert "script-src 'self'" in csp["content-security-policy"]
    until(page, lambda d: d.find_elements(By.CSS_SELECTOR, model_row("loaded", SMALL)))
    assert page.find_elements(By.CSS_SELECTOR, model_row("unloaded", OTHER))
    assert console_errors(page) == []


def test_chat_page_streams_an_answer(page: WebDriver, server: RunningServer) -> None:
    page.get(f"{server.url}/ui/chat")
    until(page, lambda d: d.find_elements(By.ID, "prompt"))
    for field, value in (("temperature", "0"), ("max_tokens", "24")):
        page.find_element(By.ID, field).clear()
        page.find_element(By.ID, field).send_keys(value)
    page.execute_script(  # counts the answer's updates: a streamed answer arrives in several
        "window.updates = 0; new MutationObserver(() => { window.updates += 1; })"
        ".observe(document.getElementById('transcript'), {subtree: true, childList: true});"
    )
    page.find_element(By.ID, "prompt").send_keys("Name three colours.")
    page.find_element(By.ID, "send").click()
    answer = until(page, lambda d: d.find_element(By.CSS_SELECTOR, ".message.assistant[data-finish]"))
    assert answer.get_attribute("data-finish") in ("stop", "length"), page.find_element(By.ID, "error").text
    assert answer.text.strip()
    assert page.execute_script("return window.updates") > 3  # the bubbles, then the answer piece by piece
    assert "in," in page.find_element(By.ID, "chat-meta").text
    shot(page, "chat")
    assert console_errors(page) == []


def test_after_a_chat_the_charts_and_recent_requests_show_it(page: WebDriver, server: RunningServer) -> None:
    page.get(f"{server.url}/ui/")
    row = until(page, lambda d: d.find_element(By.CSS_SELECTOR, "#requests tbody tr"))
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[1] == SMALL and int(cells[3]) > 0 and cells[5] in ("stop", "length"), cells
    assert len(cells) == 6  # no prompt column: prompt text is off unless the owner turns it on
    for chart in ("chart-tokens", "chart-ttft"):
        until(page, lambda d, c=chart: float(d.find_element(By.ID, c).get_attribute("data-max") or 0) > 0)
    shot(page, "dashboard")
    page.set_window_size(390, 844)  # a phone
    try:
        until(page, lambda d: d.find_element(By.ID, "chart-tokens").size["width"] < 390)
        shot(page, "dashboard-phone")
    finally:
        page.set_window_size(1280, 1100)
    assert console_errors(page) == []


def test_load_and_unload_from_the_page_change_server_ps(page: WebDriver, server: RunningServer) -> None:
    env = {**os.environ, "INVOKE_SERVER_STATE_DIR": str(server.files.folder), "COLUMNS": "200"}
    page.get(f"{server.url}/ui/")
    until(
        page, lambda d: d.find_element(By.CSS_SELECTOR, f'button[data-action="load"][data-model="{OTHER}"]')
    )
    page.find_element(By.CSS_SELECTOR, f'button[data-action="load"][data-model="{OTHER}"]').click()
    until(page, lambda d: d.find_elements(By.CSS_SELECTOR, model_row("loaded", OTHER)))
    shown = inv(env, "server.ps")
    assert shown.returncode == 0, shown.stderr
    assert any(OTHER in line and "loaded" in line for line in shown.stdout.splitlines()), shown.stdout
    page.find_element(By.CSS_SELECTOR, f'button[data-action="unload"][data-model="{OTHER}"]').click()
    until(page, lambda d: d.find_elements(By.CSS_SELECTOR, model_row("unloaded", OTHER)))
    shown = inv(env, "server.ps")
    assert shown.returncode == 0 and OTHER not in shown.stdout, shown.stdout
    assert console_errors(page) == []


@pytest.fixture
def lab_url(server: RunningServer, project_config: dict[str, Any]) -> Iterator[str]:
    """fleet.dashboard's app on this host's facts (tasks.core.fleet.local_facts, as remote.facts gathers
    them on every host), served by uvicorn on a socket that is listening before the test starts."""
    import uvicorn

    project_config["server"]["state_dir"] = str(server.files.folder)
    settings = config.validate(project_config)
    app = lab.create_app(
        lambda: [dashboard.host_view("this-host", fleet.local_facts(settings))],
        server.api_key,
        settings.server.allowed_hosts,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        web.should_exit = True
        thread.join()
        sock.close()


def test_lab_view_shows_each_hosts_facts_and_models(page: WebDriver, lab_url: str) -> None:
    assert httpx.get(f"{lab_url}/ui/api/lab").status_code == 401  # the lab view is behind the key too
    page.get(f"{lab_url}/ui/lab")  # the login cookie is the server's: same host, same key
    row = until(page, lambda d: d.find_element(By.CSS_SELECTOR, "#hosts tbody tr"))
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[:2] == ["this-host", "yes"] and cells[4] == "ok" and cells[5] == "llama_cpp", cells
    assert cells[6].endswith(" GB") and cells[7].endswith(" GB"), cells
    models = until(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#lab-models tbody tr"))
    assert any(SMALL in m.text and "loaded" in m.text for m in models), [m.text for m in models]
    shot(page, "lab")
    assert console_errors(page) == []


def test_lab_view_buttons_run_the_hosts_own_tasks(
    page: WebDriver, server: RunningServer, ssh_lab: Lab, tmp_path: Path
) -> None:
    """fleet.dashboard over a real sshd host with its own server: Pin on its model's row runs
    `server.load --pin` there, the page says so and redraws the row, and the host's `server.ps` agrees."""
    config = ssh_lab.write_config(tmp_path / "lab.yaml", server={"api_key": server.api_key})
    started = cli("fab", config, "-H", "a", "server.start", timeout_s=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        with fleet_dashboard(config, "--hosts", "a") as url:
            page.get(url)  # logged in already: the cookie is the server's, the key the same
            pin = f'#lab-models tr[data-host="a"][data-model="{SMALL}"] button[data-action="pin"]'
            until(page, lambda d: d.find_elements(By.CSS_SELECTOR, pin))[0].click()
            said = until(page, lambda d: d.find_element(By.ID, "lab-action").text.endswith("pinned") and d)
            assert said.find_element(By.ID, "lab-action").text == f"a: {SMALL} loaded and pinned"
            row = page.find_element(By.CSS_SELECTOR, f'#lab-models tr[data-host="a"][data-model="{SMALL}"]')
            assert "pinned" in row.text and not row.find_elements(By.CSS_SELECTOR, "button[data-action=pin]")
            assert page.find_elements(By.CSS_SELECTOR, '#hosts button[data-action="restart"]')
            shot(page, "lab-actions")
            assert console_errors(page) == []
        shown = cli("fab", config, "-H", "a", "server.ps", "--json")
        rows = {row["model"]: row for row in json.loads(shown.stdout)["rows"]}
        assert rows[f"{SMALL} (default)"]["until"] == "pinned", rows
    finally:
        cli("fab", config, "-H", "a", "server.stop", timeout_s=120)


def test_prompt_text_shows_only_when_the_owner_turns_it_on(own_server: Any, server: RunningServer) -> None:
    question = [{"role": "user", "content": "Say hi."}]
    auth = {"authorization": f"Bearer {server.api_key}"}
    chat = {"model": SMALL, "messages": question, "max_tokens": 4}
    httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers=auth, timeout=120).raise_for_status()
    recent = httpx.get(f"{server.url}/ui/api/state", headers=auth).json()["requests"]
    assert recent[0]["prompt"] == "" and recent[0]["completion_tokens"] > 0
    with own_server(ui_prompt_text=True) as shown:
        r = httpx.post(f"{shown.url}/v1/chat/completions", json=chat, headers=auth, timeout=120)
        r.raise_for_status()
        recent = httpx.get(f"{shown.url}/ui/api/state", headers=auth).json()["requests"]
        assert recent[0]["prompt"] == "Say hi."
