"""The server as a process: `inv server.*` tasks, the pidfile, SIGTERM, bind refusal, a dead engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference_server.app import create_app
from tasks.core import server as core
from tasks.core.config import PROJECT_ROOT
from tests.fixtures.server import free_port, settings_for_test

INV = [sys.executable, "-m", "invoke"]
TIMEOUT = 120  # seconds: the test machine is small and shared


def inv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*INV, *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def task_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`inv` with its own state dir and port; whatever it started is stopped afterwards."""
    env = {
        **os.environ,
        "INVOKE_SERVER_STATE_DIR": str(tmp_path / "state"),
        "INVOKE_SERVER_PORT": str(free_port()),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    yield env
    core.stop(core.StateFiles(tmp_path / "state"), grace_s=5)


def test_start_refuses_a_second_start_and_stop_removes_the_pidfile(task_env: dict[str, str]) -> None:
    pidfile = Path(task_env["INVOKE_SERVER_STATE_DIR"]) / "server.pid"
    started = inv(task_env, "server.start")
    assert started.returncode == 0, started.stderr
    assert f"http://127.0.0.1:{task_env['INVOKE_SERVER_PORT']}" in started.stdout
    pid = int(pidfile.read_text())

    again = inv(task_env, "server.start")
    assert again.returncode != 0
    assert f"already running (pid {pid})" in again.stderr

    status = inv(task_env, "server.status")
    assert str(pid) in status.stdout and "smollm2" in status.stdout and "ok" in status.stdout

    stopped = inv(task_env, "server.stop")
    assert f"stopped (pid {pid})" in stopped.stdout
    assert not pidfile.exists()
    assert "no server running" in inv(task_env, "server.status").stdout


def test_start_refuses_to_bind_off_loopback_without_a_key(task_env: dict[str, str]) -> None:
    refused = inv(task_env, "server.start", "--host", "0.0.0.0")
    assert refused.returncode != 0
    assert "refusing to listen on 0.0.0.0 without an API key" in refused.stderr
    assert not (Path(task_env["INVOKE_SERVER_STATE_DIR"]) / "server.pid").exists()


def test_server_process_refuses_to_bind_off_loopback_without_a_key(tmp_path: Path) -> None:
    raw = json.loads(settings_for_test().model_dump_json()) | {"host": "0.0.0.0", "api_key": ""}
    (tmp_path / "settings.json").write_text(json.dumps(raw))
    result = subprocess.run(
        [sys.executable, "-m", "inference_server", "--settings", str(tmp_path / "settings.json")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without an API key" in result.stderr


def test_sigterm_lets_an_inflight_stream_finish(own_server: Callable[..., Any]) -> None:
    with own_server(stop_grace_s=TIMEOUT) as server:
        request = {
            "model": "smollm2",
            "max_tokens": 12,
            "temperature": 0,
            "stream": True,
            "messages": [{"role": "user", "content": "Describe the sea."}],
        }
        headers = {"x-api-key": server.api_key}
        stopper = threading.Thread(target=core.stop, args=(server.files, server.settings.stop_grace_s))
        finish_reasons, done = [], False
        with httpx.stream(
            "POST", f"{server.url}/v1/chat/completions", json=request, headers=headers, timeout=TIMEOUT
        ) as response:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                choice = json.loads(line.removeprefix("data: "))["choices"][0]
                if choice["delta"].get("content") and not stopper.is_alive() and not finish_reasons:
                    stopper.start()
                if choice["finish_reason"]:
                    finish_reasons.append(choice["finish_reason"])
        stopper.join(timeout=TIMEOUT)
        assert done and finish_reasons in (["stop"], ["length"])
        assert not core._alive(server.pid)
        assert not server.files.pidfile.exists()


def test_health_turns_503_when_the_engine_worker_dies() -> None:
    """In-process app so the test can reach the engine; kill_worker is the engine's own failure path."""
    import uvicorn

    settings = settings_for_test(slots=1, context_size=1024)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=settings.url, timeout=TIMEOUT) as client:
            deadline = time.monotonic() + TIMEOUT
            while _status(client) != 200:
                assert time.monotonic() < deadline, "the server never became healthy"
                time.sleep(0.2)
            app.state.runtime.engine.kill_worker("killed by the test")
            while _status(client) != 503:
                assert time.monotonic() < deadline, "/health still says ok after the worker died"
                time.sleep(0.1)
            assert "worker stopped" in client.get("/health").json()["detail"]
            refused = client.post(
                "/v1/messages",
                headers={"x-api-key": settings.api_key},
                json={"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert refused.status_code == 503
            assert refused.json()["error"]["type"] == "overloaded_error"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _status(client: httpx.Client) -> int:
    try:
        return client.get("/health").status_code
    except httpx.TransportError:
        return 0
