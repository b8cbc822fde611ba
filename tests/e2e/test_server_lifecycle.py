"""The server as a process: `inv server.*` tasks, the pidfile, SIGTERM, bind refusal, a dead engine."""

from __future__ import annotations

import json
import os
import signal
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
from tasks.core import server_state
from tasks.core.config import PROJECT_ROOT
from tasks.core.errors import HomelabError
from tasks.core.processes import alive
from tasks.core.server_state import StateFiles
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
    core.stop(StateFiles(tmp_path / "state"), grace_s=5)


def _pid(env: dict[str, str]) -> int:
    found = server_state.look(StateFiles(Path(env["INVOKE_SERVER_STATE_DIR"])))
    assert isinstance(found, server_state.Running), found
    return found.pid


def test_start_refuses_a_second_start_and_stop_removes_the_pidfile(task_env: dict[str, str]) -> None:
    pidfile = Path(task_env["INVOKE_SERVER_STATE_DIR"]) / "server.pid"
    started = inv(task_env, "server.start")
    assert started.returncode == 0, started.stderr
    assert f"http://127.0.0.1:{task_env['INVOKE_SERVER_PORT']}" in started.stdout
    pid = _pid(task_env)

    again = inv(task_env, "server.start")
    assert again.returncode != 0
    assert f"already running (pid {pid})" in again.stderr

    status = inv(task_env, "server.status")
    assert str(pid) in status.stdout and "smollm2" in status.stdout and "ok" in status.stdout

    stopped = inv(task_env, "server.stop")
    assert f"stopped (pid {pid})" in stopped.stdout
    assert not pidfile.exists()
    assert "no server running" in inv(task_env, "server.status").stdout


def test_client_tasks_talk_to_the_running_server(task_env: dict[str, str]) -> None:
    """health, chat, logs --follow, claude and restart against a server that server.start left running."""
    url = f"http://127.0.0.1:{task_env['INVOKE_SERVER_PORT']}"
    assert inv(task_env, "server.start", "--alias", "homelab").returncode == 0
    assert inv(task_env, "server.health").stdout.startswith(f"ok: smollm2 on llama_cpp at {url}")
    listed = httpx.get(f"{url}/v1/models", timeout=TIMEOUT).json()["data"]
    ids = [model["id"] for model in listed]
    assert ids[0] == "smollm2" and ids[-1] == "homelab" and not any(i.startswith("claude") for i in ids)

    follower = subprocess.Popen(
        [*INV, "server.logs", "--follow"], cwd=PROJECT_ROOT, env=task_env, stdout=subprocess.PIPE, text=True
    )
    try:
        answer = inv(task_env, "server.chat", "What is a homelab?", "--max-tokens", "8")
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip()
        assert _read_until(follower, '"POST /v1/chat/completions HTTP/1.1" 200')
    finally:
        follower.terminate()
        follower.wait(timeout=TIMEOUT)

    exports = inv(task_env, "server.claude", "--print-only").stdout.splitlines()
    assert f"export ANTHROPIC_BASE_URL={url}" in exports
    assert "export ANTHROPIC_SMALL_FAST_MODEL=claude-haiku-5-5" in exports

    first_pid = _pid(task_env)
    bad = inv(task_env, "server.restart", "--model", "no-such-model")
    assert bad.returncode != 0 and "no-such-model" in bad.stderr
    assert _pid(task_env) == first_pid  # a bad flag is refused before anything is stopped
    assert inv(task_env, "server.restart").returncode == 0
    assert _pid(task_env) != first_pid
    assert inv(task_env, "server.health").returncode == 0

    assert inv(task_env, "server.stop").returncode == 0
    down = inv(task_env, "server.health")
    assert down.returncode != 0
    assert down.stderr.startswith(f"error: {url}: no answer") and "Traceback" not in down.stderr


def test_client_tasks_follow_the_running_server_whatever_model_is_configured(
    task_env: dict[str, str],
) -> None:
    """A server started with another model (and its own key) is what health, chat and claude talk to:
    the configured model, not on this machine, is never looked up while it runs."""
    url = f"http://127.0.0.1:{task_env['INVOKE_SERVER_PORT']}"
    assert inv(task_env, "server.start", "--api-key", "k1").returncode == 0
    other = {**task_env, "INVOKE_SERVER_MODEL": "tinyllama"}  # not downloaded here
    assert "not on this machine" in inv(other, "server.start", "--port", "1").stderr  # as configured

    health = inv(other, "server.health")
    assert health.returncode == 0, health.stderr
    assert health.stdout.startswith(f"ok: smollm2 on llama_cpp at {url}")
    answer = inv(other, "server.chat", "Hi", "--max-tokens", "4")
    assert answer.returncode == 0, answer.stderr  # the running server's model name and key
    assert answer.stdout.strip()
    exports = inv(other, "server.claude", "--print-only").stdout.splitlines()
    assert f"export ANTHROPIC_BASE_URL={url}" in exports and "export ANTHROPIC_AUTH_TOKEN=k1" in exports


def test_the_key_from_the_api_key_file_guards_the_server_and_is_in_no_argv(
    task_env: dict[str, str], tmp_path: Path
) -> None:
    import psutil

    key_file = tmp_path / "key"
    key_file.write_text("file-key-123\n")
    key_file.chmod(0o644)
    env = {**task_env, "INVOKE_SERVER_API_KEY_FILE": str(key_file)}
    refused = inv(env, "server.start")
    assert refused.returncode != 0
    assert refused.stderr.strip() == (
        f"error: {key_file}: the API key file is open to others (mode 644) — chmod 600 {key_file}"
    )

    key_file.chmod(0o600)
    assert inv(env, "server.start", "--host", "0.0.0.0").returncode == 0  # off loopback: a key is set
    url = f"http://127.0.0.1:{env['INVOKE_SERVER_PORT']}"
    assert httpx.get(f"{url}/v1/models", timeout=TIMEOUT).status_code == 401
    keyed = httpx.get(f"{url}/v1/models", headers={"x-api-key": "file-key-123"}, timeout=TIMEOUT)
    assert keyed.status_code == 200
    server = psutil.Process(_pid(env))
    assert not any("file-key-123" in word for word in server.cmdline())
    settings = Path(env["INVOKE_SERVER_STATE_DIR"]) / "server.json"
    assert oct(settings.stat().st_mode & 0o777) == "0o600"
    assert inv(env, "server.chat", "Hi", "--max-tokens", "2").returncode == 0


def test_stop_and_status_never_signal_a_process_that_reused_the_pid(task_env: dict[str, str]) -> None:
    state = StateFiles(Path(task_env["INVOKE_SERVER_STATE_DIR"]))
    state.folder.mkdir(parents=True)
    waits = [sys.executable, "-c", "import sys; sys.stdin.read()"]  # runs until we close its stdin
    bystander = subprocess.Popen(waits, stdin=subprocess.PIPE)
    try:
        for task in ("server.status", "server.stop"):
            state.pidfile.write_text(f"{bystander.pid}\n")  # left by a crashed server whose pid came back
            done = inv(task_env, task)
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("not running (stale pidfile removed")
            assert not state.pidfile.exists()
        assert bystander.poll() is None
    finally:
        assert bystander.stdin is not None
        bystander.stdin.close()
        bystander.wait(timeout=TIMEOUT)


def test_a_start_while_another_start_is_under_way_refuses_in_one_line(task_env: dict[str, str]) -> None:
    """The test holds the start lock, as a first `server.start` does from its status check to its
    pidfile write; a second one refuses at once rather than wait (and starts nothing)."""
    import fcntl

    state = StateFiles(Path(task_env["INVOKE_SERVER_STATE_DIR"]))
    state.folder.mkdir(parents=True)
    with state.lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        second = inv(task_env, "server.start")
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"error: another server.start is under way here (it holds {state.lock})"
        " — wait for it to finish, then see inv server.status"
    )
    assert not state.pidfile.exists()
    assert server_state.health(f"http://127.0.0.1:{task_env['INVOKE_SERVER_PORT']}").code == 0
    assert inv(task_env, "server.start").returncode == 0  # once released, a start goes ahead


def test_run_serves_in_the_foreground_until_interrupted(task_env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{task_env['INVOKE_SERVER_PORT']}"
    output = Path(task_env["INVOKE_SERVER_STATE_DIR"]).parent / "run.log"
    with output.open("w") as sink:
        server = subprocess.Popen(
            [*INV, "server.run"], cwd=PROJECT_ROOT, env=task_env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while server_state.health(url).code != 200:
            assert server.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "server.run never became healthy"
            time.sleep(0.2)
        assert not (Path(task_env["INVOKE_SERVER_STATE_DIR"]) / "server.pid").exists()
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=TIMEOUT) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert "Application shutdown complete" in output.read_text()
    assert server_state.health(url).code == 0


def test_start_of_a_model_that_fails_to_load_shows_the_log_and_cleans_up(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a GGUF file\n" * 64)
    served = settings_for_test(models="smollm2")
    settings = served.model_copy(update={"models": [served.default.model_copy(update={"path": broken})]})
    files = StateFiles(tmp_path / "state")
    with pytest.raises(HomelabError, match="the server is unhealthy: loading failed") as raised:
        core.start(settings, files, timeout_s=TIMEOUT)
    assert "the server log ends with" in str(raised.value) and "broken.gguf" in str(raised.value)
    assert not files.pidfile.exists()
    assert server_state.health(settings.url).code == 0


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
        assert not alive(server.pid)
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
            app.state.runtime.pool.default.engine.kill_worker("killed by the test")
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


def _read_until(process: subprocess.Popen[str], wanted: str) -> bool:
    """True once a line containing `wanted` arrives on the process's stdout (within TIMEOUT)."""
    assert process.stdout is not None
    found = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if wanted in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    return found.wait(TIMEOUT)


def test_start_with_the_mlx_engine_serves_the_models_converted_directory(
    task_env: dict[str, str], mlx_smollm2_dir: Path
) -> None:
    """`--engine mlx` on a GGUF catalog entry serves what `inv models.convert` wrote (mlx on CPU here:
    the code path a Mac runs, without its Metal GPU)."""
    missing = inv(
        {**task_env, "INVOKE_MODELS_CONVERTED_DIR": str(mlx_smollm2_dir.parent / "none")},
        "server.start",
        "--engine",
        "mlx",
    )
    assert missing.returncode != 0
    assert "has no MLX conversion" in missing.stderr and "inv models.convert smollm2" in missing.stderr

    env = {**task_env, "INVOKE_MODELS_CONVERTED_DIR": str(mlx_smollm2_dir.parent)}
    assert inv(env, "server.start", "--engine", "mlx").returncode == 0
    url = f"http://127.0.0.1:{env['INVOKE_SERVER_PORT']}"
    assert inv(env, "server.health").stdout.startswith(f"ok: smollm2 on mlx at {url}")
    answer = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=TIMEOUT,
    ).json()
    assert answer["usage"]["completion_tokens"] >= 1 and answer["choices"][0]["message"]["content"]
