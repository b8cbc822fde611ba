"""Process management for the inference server: its settings, start/stop, status, logs, and a chat client.

The server runs detached in its own session; what it is and where it listens is recorded under
`server.state_dir` (tasks.core.server_state, which every task reads). The server gets all its settings
as one JSON file (inference_server.settings), never reading invoke.yaml itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from inference_server.engines import factory, memory
from inference_server.engines.base import EngineError
from inference_server.settings import Alias, ModelFormat, ModelSpec, ServerSettings
from tasks.core import catalog, convert, server_state, service, store
from tasks.core.config import PROJECT_ROOT, ModelsSettings, ServerConfig, Settings
from tasks.core.errors import HomelabError
from tasks.core.files import PRIVATE, write_atomically
from tasks.core.processes import alive
from tasks.core.server_state import Endpoint, Running, Stale, StateFiles

if TYPE_CHECKING:
    from inference_server.pool import Footprint

SHUTDOWN_MARGIN_S = 5.0  # after the grace period the engine still has to stop its worker
CHAT_TIMEOUT_S = 300.0  # also a load's: a big model from a cold disk
ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Status:
    pid: int
    started: float
    url: str
    model: str
    engine: str
    health: str
    manager: str = "server.start"  # or the service manager that runs it: systemd, launchd


def served_settings(
    settings: Settings,
    api_key_file: str = "",
    models: str = "",
    alias: list[str] | None = None,
    manage_command: list[str] | None = None,
    rpc_helpers: int = 0,
    **flags: Any,
) -> ServerSettings:
    """The server's settings: invoke.yaml's `server:` section, with every non-empty flag winning.

    The fields both share are taken over by name; the models (each with its files, format and
    context, capped by the model's own), the aliases, the key and the memory budget are worked out
    here. `models` ("a,b") and `alias` ("PATTERN[=MODEL]", repeatable) replace the configured lists.
    `manage_command` is how the server runs this checkout's tasks (default: its own `inv`); the fit
    counts `rpc_helpers` helpers' share of the layers as theirs (their endpoints come later)."""
    given = {k: v for k, v in flags.items() if flag_given(k, v)}
    try:  # validated again, so a flag is held to its setting's rules (a keep_alive of "5m", say)
        config = ServerConfig.model_validate({**settings.server.model_dump(), **given})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HomelabError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    entries = catalog.load_catalog(settings.models.catalog)
    default = catalog.get_entry(entries, config.model)
    chosen = [n.strip() for n in models.split(",") if n.strip()] if models else config.models
    served_entries = (
        [catalog.get_entry(entries, name) for name in dict.fromkeys([default.name, *chosen])]
        if chosen
        else [default, *_installed(entries, config.engine, settings.models, besides=default.name)]
    )
    specs = [model_spec(entry, config, settings.models) for entry in served_entries]
    served_names = [spec.name for spec in specs]
    try:
        served = ServerSettings(
            **{
                **config.model_dump(
                    include=set(ServerSettings.model_fields) & set(type(config).model_fields)
                ),
                "models": specs,
                "default_model": default.name,
                "model_aliases": _aliases(config, alias, served_names),
                "api_key": server_state.api_key(settings.server, flags.get("api_key", ""), api_key_file),
                "memory_budget_bytes": config.memory_budget_mb * MIB or memory.default_budget_bytes(),
                "manage_command": manage_command or MANAGE_COMMAND,
                "rpc_servers": [],  # the tunnels' ends, once open (tasks.core.rpc)
                "rpc_watch": "",
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise HomelabError(str(first["msg"]).removeprefix("Value error, ")) from None
    unknown_pins = set(config.pinned) - set(served_names)
    if unknown_pins:
        raise HomelabError(
            f"server.pinned names {sorted(unknown_pins)}, which this server does not serve",
            "install them or add them to server.models",
        )
    need = _footprint(served, rpc_helpers)
    if need.bytes > served.memory_budget_bytes:
        raise HomelabError(need.too_big(default.name, served.memory_budget_bytes))
    return served


def _footprint(served: ServerSettings, helpers: int) -> Footprint:
    """The default model's footprint with `helpers` rpc-servers holding an even share of its layers."""
    from inference_server import pool  # FastAPI and the engines' tables: only starting needs them

    tunnels = ["127.0.0.1:0"] * helpers  # stand-ins for the endpoints: only their number counts
    return pool.footprint(served.default, served.model_copy(update={"rpc_servers": tunnels}))


def helper_share_bytes(served: ServerSettings, helpers: int) -> int:
    """What each of `helpers` rpc-servers holds of the default model: its layers' weights and KV cache."""
    return _footprint(served, helpers).on_helpers // helpers if helpers else 0


MIB = 2**20
MANAGE_COMMAND = [sys.executable, "-m", "invoke", "--search-root", str(PROJECT_ROOT)]


def model_spec(entry: catalog.CatalogEntry, config: ServerConfig, models: ModelsSettings) -> ModelSpec:
    """How a server with `config` serves an installed entry."""
    path, model_format = model_files(entry, config.engine, models)
    try:
        factory.choose(config.engine, model_format)
    except EngineError as exc:
        raise HomelabError(f"model '{entry.name}': {exc}", "pick another --engine (or auto)") from None
    return ModelSpec(
        name=entry.name,
        path=path,
        format=model_format,
        kind=entry.kind,
        context_size=min(config.context_size, entry.context_length),
        slots=config.slots,
        keep_alive_s=config.keep_alive,
        pinned=entry.name in config.pinned,
    )


def _installed(
    entries: dict[str, catalog.CatalogEntry], engine: str, models: ModelsSettings, besides: str
) -> list[catalog.CatalogEntry]:
    """Every other entry this host has the files of, in a format the engine serves."""
    found = []
    for entry in entries.values():
        if entry.name == besides:
            continue
        try:
            _, model_format = model_files(entry, engine, models)
            factory.choose(engine, model_format)  # type: ignore[arg-type]
        except (HomelabError, EngineError):
            continue
        found.append(entry)
    return found


def _aliases(config: ServerConfig, flags: list[str] | None, served: list[str]) -> list[Alias]:
    """PATTERN -> model ("" = the default); each target must be served here."""
    pairs = (
        [(f.partition("=")[0], f.partition("=")[2]) for f in flags] if flags else config.model_aliases.items()
    )
    aliases = [Alias(pattern=pattern, model=model or config.model) for pattern, model in pairs]
    for alias in aliases:
        if alias.model not in served:
            raise HomelabError(
                f"alias '{alias.pattern}' routes to '{alias.model}', which this server does not serve",
                f"install it (inv models.download {alias.model}) or add it to server.models",
            )
    return aliases


# Settings for which 0 is a real value (no queue at all, no grace); a task's default for them is -1.
_ZERO_IS_A_VALUE = frozenset({"queue_size", "swap_grace_s"})


def flag_given(name: str, value: Any) -> bool:
    """Whether a task flag was set: typed defaults (0, "", None) mean "from invoke.yaml"."""
    if name in _ZERO_IS_A_VALUE:
        return isinstance(value, int | float) and value >= 0
    return bool(value)


def model_files(entry: catalog.CatalogEntry, engine: str, models: ModelsSettings) -> tuple[Path, ModelFormat]:
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
    return server_state.client_url(served.host, served.port)


def start(served: ServerSettings, files: StateFiles, timeout_s: float) -> Status:
    """Start detached, wait for /health 200; on failure stop it and show the log's last lines.

    One start at a time: the lock is held from the look at the pidfile until the new one is written,
    so a second start either refuses at once or finds this server running."""
    with server_state.start_lock(files):
        found = server_state.look(files)
        if isinstance(found, Running):
            raise HomelabError(
                f"a server is already running (pid {found.pid}) at {found.endpoint.url}",
                "stop it first: inv server.stop (or inv server.restart)",
            )
        if not port_free(served.host, served.port):
            raise HomelabError(
                f"port {served.port} on {served.host} is already in use",
                "pick another with --port, or stop what uses it",
            )
        write_atomically(files.settings, served.model_dump_json(indent=2), mode=PRIVATE)
        command = [sys.executable, "-m", "inference_server", "--settings", str(files.settings)]
        process, recorded = launch(files, command)
    if recorded:
        problem = wait_healthy(client_url(served), process, timeout_s)
    elif process.poll() is not None:
        problem = f"the server exited with code {process.returncode}"
    else:
        problem = "the started server never showed its command line, so it cannot be told apart"
    if problem:
        process.kill()
        process.wait()
        server_state.forget(files)
        raise HomelabError(
            f"{problem}; the server log ends with:\n{tail(files.log, 15)}", f"full log: {files.log}"
        )
    started = status(files)
    if not isinstance(started, Status):  # stopped or replaced since it answered: say so, leave nothing
        process.kill()
        process.wait()
        raise HomelabError("the server stopped right after it became healthy", f"see its log: {files.log}")
    return started


def start_split(
    served: ServerSettings,
    files: StateFiles,
    timeout_s: float,
    hosts: list[str],
    config: Any,
    settings: Settings,
) -> Status:
    """`start`, with the model's layers shared by the rpc-servers of `hosts` (tasks.core.rpc): the
    tunnels open first (refused where a helper's share does not fit), and close again if the server
    does not start."""
    from tasks.core import rpc

    if not hosts:
        return start(served, files, timeout_s)
    share = helper_share_bytes(served, len(hosts))
    tunnels = rpc.open_tunnels(config, settings, hosts, files.folder, share)
    try:
        return start(
            served.model_copy(update={"rpc_servers": tunnels.endpoints, "rpc_watch": tunnels.watch}),
            files,
            timeout_s,
        )
    except BaseException:
        rpc.close_tunnels(files.folder)
        raise


def stop(files: StateFiles, grace_s: float) -> Running | Stale | None:
    """SIGTERM, then SIGKILL after the grace (plus the engine's shutdown), to the process the pidfile
    records and only if it is still that process; what was found (a stale pidfile is just removed).

    Once identified, the wait is on the pid itself: an exiting process stops showing its command line
    before its last thread ends, and its pid is not reused until it is gone."""
    found = server_state.look(files)
    if isinstance(found, Running):
        _signal(found, signal.SIGTERM)
        deadline = time.monotonic() + grace_s + SHUTDOWN_MARGIN_S
        while alive(found.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(found.pid):
            _signal(found, signal.SIGKILL)
            while alive(found.pid):
                time.sleep(0.05)
    if found is not None:
        server_state.forget(files)
    from tasks.core import rpc

    rpc.close_tunnels(files.folder)  # after the server: its RPC sockets must not break under it
    return found


def status(files: StateFiles) -> Status | Stale | None:
    """The running server and its health; Stale (its pidfile removed) when the recorded process is gone
    or is another process now; None when no server was started."""
    found = server_state.look(files)
    if isinstance(found, Stale):
        server_state.forget(files)
    if not isinstance(found, Running):
        return found
    answer = server_state.health(found.endpoint.url)
    return Status(
        pid=found.pid,
        started=found.identity.create_time,
        url=found.endpoint.url,
        model=found.endpoint.model,
        engine=str(answer.body.get("engine", found.engine)),
        health="ok" if answer.ok else answer.detail,
    )


def managed_status(files: StateFiles, kind: service.Manager, pid: int) -> Status:
    """The server a service manager runs as `pid`, from the settings install-service wrote."""
    import psutil

    endpoint, engine = server_state.served_endpoint(service.settings_file(files))
    answer = server_state.health(endpoint.url)
    return Status(
        pid=pid,
        started=psutil.Process(pid).create_time(),
        url=endpoint.url,
        model=endpoint.model,
        engine=str(answer.body.get("engine", engine)),
        health="ok" if answer.ok else answer.detail,
        manager=kind,
    )


def start_managed(files: StateFiles, kind: service.Manager, timeout_s: float) -> Status:
    """Start the installed service through its manager and wait until it answers."""
    service.start(kind)
    url = server_state.served_endpoint(service.settings_file(files))[0].url
    problem = wait_healthy(url, None, timeout_s)
    pid = service.main_pid(kind)
    if problem or not pid:
        raise HomelabError(
            f"{problem or 'the service is not running'}; the server log ends with:\n{tail(files.log, 15)}",
            f"full log: {files.log}",
        )
    return managed_status(files, kind, pid)


def chat(
    endpoint: Endpoint,
    prompt: str,
    max_tokens: int,
    temperature: float,
    on_text: Callable[[str], None],
    timeout_s: float = CHAT_TIMEOUT_S,
) -> None:
    """Stream one answer through /v1/chat/completions, calling `on_text` for each piece; anything that
    goes wrong on the way is one line with what to do."""
    import httpx

    request: dict[str, Any] = {
        "model": endpoint.model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "temperature": temperature,
    }
    if max_tokens:
        request["max_tokens"] = max_tokens
    url = endpoint.url
    with (
        _reaching(url, timeout_s),
        httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=request, headers=_auth(endpoint), timeout=timeout_s
        ) as r,
    ):
        if r.status_code != 200:
            r.read()
            raise HomelabError(f"server answered {r.status_code}: {_error_message(r.text)}")
        for data in _sse_data(r.iter_lines()):
            for choice in data.get("choices", []):
                if text := choice.get("delta", {}).get("content"):
                    on_text(text)


@dataclass(frozen=True)
class LoadedModel:
    """A row of `server.ps`: one model the server serves, as /admin/models reports it."""

    name: str
    engine: str
    state: str
    pinned: bool
    default: bool
    context_size: int
    slots: int
    active_requests: int
    estimate_bytes: int
    resident_bytes: int
    expires_in_s: float | None  # None: not loaded, busy, pinned or kept forever
    devices: str  # where a model split over RPC helpers sits ("" on one host)

    @classmethod
    def of(cls, row: dict[str, Any]) -> LoadedModel:
        estimate = row.get("estimate") or {}
        return cls(
            row["name"],
            row["engine"],
            row["state"],
            row["pinned"],
            row["default"],
            row["context_size"],
            row["slots"],
            row["active_requests"],
            int(estimate.get("total_bytes", 0)),
            row["resident_bytes"],
            row["expires_in_s"],
            row.get("devices", ""),
        )


def models(endpoint: Endpoint) -> list[LoadedModel]:
    """Every model the running server may serve, loaded or not."""
    return [LoadedModel.of(row) for row in admin_rows(endpoint)]


def admin_rows(endpoint: Endpoint, timeout_s: float = ADMIN_TIMEOUT_S) -> list[dict[str, Any]]:
    """GET /admin/models' rows as the server sends them (the dashboard shows them as they are)."""
    rows: list[dict[str, Any]] = _admin(endpoint, "GET", "/admin/models", timeout_s=timeout_s)["models"]
    return rows


def load(endpoint: Endpoint, name: str, pin: bool, timeout_s: float = CHAT_TIMEOUT_S) -> LoadedModel:
    return LoadedModel.of(
        _admin(endpoint, "POST", f"/admin/models/{name}/load", {"pin": str(pin).lower()}, timeout_s)
    )


def unload(endpoint: Endpoint, name: str) -> LoadedModel:
    return LoadedModel.of(_admin(endpoint, "POST", f"/admin/models/{name}/unload"))


def routes(endpoint: Endpoint, names: list[str]) -> dict[str, str | None]:
    """The model each name reaches on the running server (None: not served); {} when none runs."""
    import httpx

    routed: dict[str, str | None] = {}
    for name in names:
        try:
            r = httpx.get(
                f"{endpoint.url}/v1/models/{name}", headers=_auth(endpoint), timeout=ADMIN_TIMEOUT_S
            )
        except httpx.HTTPError:
            return {}
        routed[name] = str(r.json().get("served_by", name)) if r.status_code == 200 else None
    return routed


def _admin(
    endpoint: Endpoint,
    method: str,
    path: str,
    params: dict[str, Any] | None = None,
    timeout_s: float = ADMIN_TIMEOUT_S,
) -> dict[str, Any]:
    import httpx

    with _reaching(endpoint.url, timeout_s):
        r = httpx.request(
            method, endpoint.url + path, params=params, headers=_auth(endpoint), timeout=timeout_s
        )
    if r.status_code != 200:
        raise HomelabError(f"server answered {r.status_code}: {_error_message(r.text)}")
    answer: dict[str, Any] = r.json()
    return answer


def _auth(endpoint: Endpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}


@contextlib.contextmanager
def _reaching(url: str, timeout_s: float) -> Iterator[None]:
    """Whatever goes wrong on the way to the server, as one line with what to do."""
    import httpx

    try:
        yield
    except httpx.ConnectError:
        raise HomelabError(f"no server at {url}", "start one: inv server.start") from None
    except httpx.TimeoutException:
        raise HomelabError(
            f"{url} did not answer within {timeout_s:g} s", "see inv server.status and inv server.logs"
        ) from None
    except httpx.HTTPError as exc:
        raise HomelabError(
            f"the connection to {url} failed: {exc or type(exc).__name__}",
            "see inv server.status and inv server.logs",
        ) from None


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


def launch(files: server_state.StateFiles, command: list[str]) -> tuple[subprocess.Popen[bytes], bool]:
    """Start a process of ours that outlives this task: its own session, stdin closed, its output in
    `files.log`, its pid recorded; and whether the record took (see server_state.record)."""
    with files.log.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, server_state.record(files, process.pid, command)


def wait_healthy(url: str, process: subprocess.Popen[bytes] | None, timeout_s: float) -> str:
    """'' once /health answers 200, else why not (`process`: ours to watch, None under a manager)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return f"the server exited with code {process.returncode}"
        answer = server_state.health(url)
        if answer.ok:
            return ""
        if answer.body.get("status") == "error":
            return f"the server is unhealthy: {answer.body.get('detail')}"
        time.sleep(0.25)
    return f"the server did not become healthy within {timeout_s:g} s"


def port_free(host: str, port: int) -> bool:
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        socket.create_server((host, port), family=family).close()
    except OSError:
        return False
    return True


def _signal(running: Running, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(running.pid, signum)


def run_reloading(
    served: ServerSettings, files: StateFiles, timeout_s: float, on_event: Callable[[str], None]
) -> None:
    """The server in the foreground, restarted whenever a .py file under inference_server/ changes,
    until Ctrl-C; `on_event` hears each restart and what it cost (change seen → /health 200).

    Each run is a fresh `python -m inference_server` (the engine's one worker thread and the code
    being edited cannot outlive a reload in one process). What stays out of the loop: the settings,
    worked out once here (catalog, bundled files, memory check) and handed over as a file, and the
    model's pages, which a restart maps again from the page cache rather than from disk."""
    import watchfiles

    settings_file = files.folder / "run.json"  # not server.json: that one says a server.start runs
    write_atomically(settings_file, served.model_dump_json(indent=2), mode=PRIVATE)
    command = [sys.executable, "-m", "inference_server", "--settings", str(settings_file)]
    watched = PROJECT_ROOT / "inference_server"
    url = client_url(served)

    def healthy(process: subprocess.Popen[bytes], began: float, done: str) -> None:
        problem = wait_healthy(url, process, timeout_s)
        took = f"{done} in {time.monotonic() - began:.1f} s at {url} (pid {process.pid})"
        on_event(f"not serving: {problem} (fix the code: the next change restarts it)" if problem else took)

    began = time.monotonic()
    process = subprocess.Popen(command, cwd=PROJECT_ROOT)
    try:
        healthy(process, began, "ready")
        for changes in watchfiles.watch(watched, watch_filter=watchfiles.PythonFilter()):
            began = time.monotonic()
            changed = sorted({os.path.relpath(path, PROJECT_ROOT) for _, path in changes})
            on_event(f"reloading: {', '.join(changed)} changed")
            _end(process, served.stop_grace_s)
            process = subprocess.Popen(command, cwd=PROJECT_ROOT)
            healthy(process, began, "reloaded")
    finally:
        _end(process, served.stop_grace_s)
        settings_file.unlink(missing_ok=True)


def _end(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM (requests in flight get the grace), then SIGKILL; waits until it is gone."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(grace_s + SHUTDOWN_MARGIN_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
