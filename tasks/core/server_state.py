"""The server `inv server.start` left running, as every task sees it: its files, identity, URL and health.

server.start records in server.state_dir the process it started (pid, start time and command line), the
settings it serves and its log; the server tasks, doctor, fleet and the test tasks read them only through
here. Standard library only (psutil once there is a pid to check), so `doctor --fast` and fleet's probe
stay cheap, and no server code is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.errors import HomelabError
from tasks.core.files import PRIVATE, write_atomically
from tasks.core.processes import alive

if TYPE_CHECKING:
    from tasks.core.config import ServerConfig

HEALTH_TIMEOUT_S = 3.0
EXEC_VISIBLE_S = 10.0  # a started process shows its own command line well within this


@dataclass(frozen=True)
class StateFiles:
    folder: Path
    name: str = "server"  # the gateway's files are "gateway.*" (tasks.core.gateway)

    @property
    def pidfile(self) -> Path:
        return self.folder / f"{self.name}.pid"

    @property
    def settings(self) -> Path:
        """The settings the process was started with (for the server, inference_server.settings as JSON)."""
        return self.folder / f"{self.name}.json"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.name}.lock"


@dataclass(frozen=True)
class Identity:
    """What tells our server from a process that later got its pid: the pid, its start time and its
    command line (psutil's own notion of the same process is pid plus start time)."""

    pid: int
    create_time: float
    cmdline: tuple[str, ...]

    @classmethod
    def of(cls, pid: int) -> Identity:
        import psutil

        process = psutil.Process(pid)
        return cls(pid, process.create_time(), tuple(process.cmdline()))

    def matches(self) -> bool:
        """True while the process with this pid is the one recorded."""
        import psutil

        if not alive(self.pid):  # also reaps our own child once it exited
            return False
        try:
            return Identity.of(self.pid) == self
        except psutil.Error:  # gone meanwhile, a zombie, or not ours to read
            return False


@dataclass(frozen=True)
class Endpoint:
    """Where a client on this host reaches a server, the key it wants and the model it serves."""

    url: str
    api_key: str
    model: str
    context_size: int = 0  # tokens one request may use (0: not known)


@dataclass(frozen=True)
class Running:
    identity: Identity
    endpoint: Endpoint
    engine: str

    @property
    def pid(self) -> int:
        return self.identity.pid


@dataclass(frozen=True)
class Stale:
    """A pidfile whose process is gone, or is another process now: never signalled."""

    pid: int


def look(files: StateFiles) -> Running | Stale | None:
    """The server the pidfile records if it still runs; Stale if it does not; None without a pidfile."""
    try:
        raw = json.loads(files.pidfile.read_text())
        identity = Identity(int(raw["pid"]), float(raw["create_time"]), tuple(raw["cmdline"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):  # unreadable, or a bare pid from an older version
        return Stale(_first_number(files.pidfile))
    if not identity.matches():
        return Stale(identity.pid)
    endpoint, engine = served_endpoint(files.settings)
    return Running(identity, endpoint, engine)


def served_endpoint(settings: Path) -> tuple[Endpoint, str]:
    """Where the server serving the settings in this file listens, and its engine setting."""
    served = _read_json(settings)
    default = str(served.get("default_model", ""))
    models = served.get("models")
    listed: list[dict[str, Any]] = models if isinstance(models, list) else []
    spec = next((m for m in listed if m.get("name") == default), {})
    endpoint = Endpoint(
        client_url(str(served.get("host", "")), int(served.get("port", 0))),
        str(served.get("api_key", "")),
        default,
        int(spec.get("context_size", 0)),
    )
    return endpoint, str(served.get("engine", ""))


def record(files: StateFiles, pid: int, cmdline: Sequence[str]) -> bool:
    """Write the pidfile for the process just started as `pid` with `cmdline`; False if it exits first.

    Waits until the process shows that command line: the kernel lets the parent go on a moment before
    the new program's argv is readable, and a pidfile read in between would look stale."""
    import psutil

    deadline = time.monotonic() + EXEC_VISIBLE_S
    while True:
        try:
            identity = Identity.of(pid)
        except psutil.Error:
            return False
        if identity.cmdline == tuple(cmdline):
            break
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    write_atomically(files.pidfile, json.dumps(asdict(identity)) + "\n", mode=PRIVATE)
    return True


def forget(files: StateFiles) -> None:
    files.pidfile.unlink(missing_ok=True)
    files.settings.unlink(missing_ok=True)


@contextlib.contextmanager
def start_lock(files: StateFiles) -> Iterator[None]:
    """Held by one start from its look at the pidfile until it has written its own: a second start at
    the same time refuses at once rather than start a server nobody can stop."""
    import fcntl

    files.folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(files.lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, PRIVATE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HomelabError(
                f"another {files.name}.start is under way here (it holds {files.lock})",
                f"wait for it to finish, then see inv {files.name}.status",
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def endpoint(files: StateFiles, configured: ServerConfig) -> Endpoint:
    """The running server's endpoint; when none runs, the configured one (a `server.run` there, say)."""
    found = look(files)
    if isinstance(found, Running):
        return found.endpoint
    url = client_url(configured.host, configured.port)
    return Endpoint(url, api_key(configured), configured.model, configured.context_size)


def client_url(host: str, port: int) -> str:
    """The URL a client on this host uses for a server bound to host:port (a wildcard is loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def api_key(configured: ServerConfig, key: str = "", key_file: str = "") -> str:
    """The key clients must send: `key`, else the one in `key_file`, else server.api_key or the file
    server.api_key_file names (a key in a file stays out of every process's argv)."""
    if key:
        return key
    if key_file:
        return read_key_file(Path(key_file).expanduser())
    if configured.api_key and configured.api_key_file:
        raise HomelabError(
            "server.api_key and server.api_key_file are both set", "keep one of them in invoke.yaml"
        )
    return read_key_file(Path(configured.api_key_file)) if configured.api_key_file else configured.api_key


def read_key_file(path: Path) -> str:
    """The key a file holds, refused when others may read or change it (as ssh refuses such a key)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise HomelabError(
            f"{path}: the API key file is open to others (mode {mode:03o})", f"chmod 600 {path}"
        )
    key = path.read_text().strip()
    if not key:
        raise HomelabError(f"{path}: the API key file is empty", "write the key into it")
    return key


@dataclass(frozen=True)
class Health:
    code: int  # 0 when nothing answers
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def detail(self) -> str:
        return str(self.body.get("detail") or self.body.get("status") or f"HTTP {self.code}")


def health(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> Health:
    """GET url/health, with the standard library and no proxy (the server is on this host).

    A port nobody listens on is told by a bare connect first, before urllib (with http.client and
    email) is imported: the usual answer for `doctor --fast`, which probes on every run."""
    import socket
    import urllib.parse

    where = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((where.hostname, where.port), timeout=timeout_s).close()
    except OSError as exc:
        return Health(0, {"status": "down", "detail": f"no answer ({exc})"})
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/health", timeout=timeout_s) as response:
            return Health(response.status, _json_object(response.read()))
    except urllib.error.HTTPError as exc:
        return Health(exc.code, _json_object(exc.read()))
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Health(0, {"status": "down", "detail": f"no answer ({reason})"})


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except ValueError:
        return {"status": data[:200].decode(errors="replace")}
    return body if isinstance(body, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _first_number(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
