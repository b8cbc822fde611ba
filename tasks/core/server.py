"""Process management for the inference server: settings, start/stop, status, logs, and small clients.

The server runs detached in its own session; its pid, log and settings live under `server.state_dir`.
The server gets all its settings as one JSON file (inference_server.settings), never reading
invoke.yaml itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from inference_server import settings as served_file
from inference_server.engines import factory
from inference_server.engines.base import EngineError
from inference_server.settings import ServerSettings
from tasks.core import catalog, convert, store
from tasks.core.config import PROJECT_ROOT, ModelsSettings, Settings
from tasks.core.errors import HomelabError
from tasks.core.processes import alive

SHUTDOWN_MARGIN_S = 5.0  # after the grace period the engine still has to stop its worker

ModelFormat = Literal["gguf", "mlx", "safetensors"]


@dataclass(frozen=True)
class StateFiles:
    folder: Path

    @property
    def pidfile(self) -> Path:
        return self.folder / "server.pid"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @property
    def settings(self) -> Path:
        return self.folder / "server.json"


@dataclass(frozen=True)
class Status:
    pid: int
    started: float
    url: str
    model: str
    engine: str
    health: str


def served_settings(settings: Settings, **flags: Any) -> ServerSettings:
    """The server's settings: invoke.yaml's `server:` section, with every non-empty flag winning."""
    config = settings.server.model_copy(update={k: v for k, v in flags.items() if v})
    entry = catalog.get_entry(catalog.load_catalog(settings.models.catalog), config.model)
    path, model_format = _model_files(entry, config.engine, settings.models)
    try:
        served = ServerSettings(
            model_name=entry.name,
            model_path=path,
            model_format=model_format,
            engine=config.engine,
            host=config.host,
            port=config.port,
            api_key=config.api_key,
            context_size=min(config.context_size, entry.context_length),
            slots=config.slots,
            queue_size=config.queue_size,
            prefix_cache_bytes=config.prefix_cache_bytes,
            threads=config.threads,
            model_aliases=config.model_aliases,
            strip_billing_header=config.strip_billing_header,
            stop_grace_s=config.stop_grace_s,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HomelabError(str(first["msg"]).removeprefix("Value error, ")) from None
    try:
        factory.choose(served)
    except EngineError as exc:
        raise HomelabError(f"model '{entry.name}': {exc}", "pick another --engine (or auto)") from None
    return served


def _model_files(
    entry: catalog.CatalogEntry, engine: str, models: ModelsSettings
) -> tuple[Path, ModelFormat]:
    """What the engine loads, and its format: the GGUF file, a model directory, or, for the MLX engine
    on a GGUF entry, the directory `inv models.convert` wrote for it."""
    if engine == "mlx" and entry.format == "gguf":
        converted = convert.default_output(entry.name, models)
        if not (converted / "config.json").is_file():
            raise HomelabError(
                f"model '{entry.name}' is GGUF and has no MLX conversion at {converted}",
                f"run `inv models.convert {entry.name}`",
            )
        return converted, "mlx"
    path = store.installed_file(entry, models)
    if path is None:
        raise HomelabError(
            f"model '{entry.name}' is not on this machine", f"run `inv models.download {entry.name}`"
        )
    return (path, entry.format) if entry.format == "gguf" else (path.parent, entry.format)


def client_url(served: ServerSettings) -> str:
    """Where a client on this host reaches the server (a wildcard bind is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(served.host, served.host)
    return served.model_copy(update={"host": host}).url


def start(served: ServerSettings, files: StateFiles, timeout_s: float) -> Status:
    """Start detached, wait for /health 200; on failure stop it and show the log's last lines."""
    if (running := status(files)) is not None:
        raise HomelabError(
            f"a server is already running (pid {running.pid}) at {running.url}",
            "stop it first: inv server.stop (or inv server.restart)",
        )
    if not _port_free(served.host, served.port):
        raise HomelabError(
            f"port {served.port} on {served.host} is already in use",
            "pick another with --port, or stop what uses it",
        )
    files.folder.mkdir(parents=True, exist_ok=True)
    _write_private(files.settings, served.model_dump_json(indent=2))
    with files.log.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "inference_server", "--settings", str(files.settings)],
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _write_private(files.pidfile, f"{process.pid}\n")
    problem = _wait_healthy(client_url(served), process, timeout_s)
    if problem:
        _kill(process.pid)
        _forget(files)
        raise HomelabError(
            f"{problem}; the server log ends with:\n{tail(files.log, 15)}", f"full log: {files.log}"
        )
    started = status(files)
    assert started is not None
    return started


def stop(files: StateFiles, grace_s: float) -> int | None:
    """SIGTERM, then SIGKILL after the grace (plus the engine's shutdown); the pid stopped, or None."""
    pid = _read_pid(files)
    if pid is None:
        return None
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + SHUTDOWN_MARGIN_S
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            _kill(pid)
    _forget(files)
    return pid


def status(files: StateFiles) -> Status | None:
    """The running server, or None (a stale pidfile is removed)."""
    pid = _read_pid(files)
    if pid is None:
        return None
    if not alive(pid):
        _forget(files)
        return None
    served = served_file.load(files.settings)
    url = client_url(served)
    code, answer = health(url)
    return Status(
        pid=pid,
        started=files.pidfile.stat().st_mtime,
        url=url,
        model=served.model_name,
        engine=str(answer.get("engine", served.engine)),
        health="ok" if code == 200 else str(answer.get("detail") or answer.get("status") or code),
    )


def current(files: StateFiles, fallback: ServerSettings) -> ServerSettings:
    """The running server's settings if one runs, else what a start would use."""
    return served_file.load(files.settings) if status(files) is not None else fallback


def health(url: str) -> tuple[int, dict[str, Any]]:
    """/health's status code and body; 0 when nothing answers."""
    import httpx

    try:
        response = httpx.get(f"{url}/health", timeout=3)
    except httpx.HTTPError as exc:
        return 0, {"status": "down", "detail": f"no answer ({type(exc).__name__})"}
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"status": response.text[:200]}


def chat(
    url: str,
    api_key: str,
    model: str,
    prompt: str,
    max_tokens: int,
    temperature: float,
    on_text: Callable[[str], None],
) -> None:
    """Stream one answer through /v1/chat/completions, calling `on_text` for each piece."""
    import httpx

    request: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "temperature": temperature,
    }
    if max_tokens:
        request["max_tokens"] = max_tokens
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=request, headers=headers, timeout=300
        ) as r:
            if r.status_code != 200:
                r.read()
                raise HomelabError(f"server answered {r.status_code}: {_error_message(r.text)}")
            for data in _sse_data(r.iter_lines()):
                for choice in data.get("choices", []):
                    if text := choice.get("delta", {}).get("content"):
                        on_text(text)
    except httpx.ConnectError:
        raise HomelabError(f"no server at {url}", "start one: inv server.start") from None


def tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def follow(path: Path, lines: int) -> Iterator[str]:
    """The last lines, then new ones as they are written (until interrupted)."""
    yield from tail(path, lines).splitlines(keepends=False)
    with path.open(errors="replace") as handle:
        handle.seek(0, os.SEEK_END)
        while True:
            line = handle.readline()
            if line:
                yield line.rstrip("\n")
            else:
                time.sleep(0.3)


def _sse_data(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            data = json.loads(line[len("data: ") :])
            if "error" in data:
                raise HomelabError(f"server error: {data['error'].get('message')}")
            yield data


def _error_message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text[:200]


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> str:
    """'' once /health answers 200, else why not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"the server exited with code {process.returncode}"
        code, answer = health(url)
        if code == 200:
            return ""
        if answer.get("status") == "error":
            return f"the server is unhealthy: {answer.get('detail')}"
        time.sleep(0.25)
    return f"the server did not become healthy within {timeout_s:g} s"


def _port_free(host: str, port: int) -> bool:
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socket.create_server((host, port), family=family).close()
    except OSError:
        return False
    return True


def _read_pid(files: StateFiles) -> int | None:
    try:
        return int(files.pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while alive(pid):
        time.sleep(0.05)


def _forget(files: StateFiles) -> None:
    files.pidfile.unlink(missing_ok=True)
    files.settings.unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    """Owner-only (it may hold the API key), written whole: temp file, then rename."""
    temp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    temp.replace(path)
