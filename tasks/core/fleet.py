"""Many hosts at once: a task on each in parallel with host-prefixed output, and each host's facts.

`fab -H a,b,c` runs hosts one after another and stops at the first failure; here every host runs at the
same time and every host gets a result row, an unreachable one included.

Why threads of our own rather than fabric's ThreadingGroup: a Group runs one command with one set of
run() options on every host, but here each host has its own command (its checkout and interpreter
from the inventory) and its own prefixed output streams, and needs its own timing and error row.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from tasks.core import remote
from tasks.core.config import PROJECT_ROOT, Settings
from tasks.core.errors import HomelabError
from tasks.core.remote import Target

FACTS_TASK = "remote.facts"
S = TypeVar("S")
T = TypeVar("T")


@dataclass(frozen=True)
class HostRun:
    """How a task went on one host."""

    host: str
    ok: bool
    exit_code: int
    seconds: float
    last_error: str


@dataclass(frozen=True)
class HostFacts:
    """What `fleet.status` shows for one host; gathered on the host itself by `remote.facts --json`."""

    revision: str
    server: str
    model: str
    health: str
    disk_free_gb: float
    # Newer facts (fleet.dashboard's); a host whose checkout predates them sends none of these.
    engine: str = ""
    memory_free_gb: float | None = None
    models: list[dict[str, Any]] = field(default_factory=list)  # GET /admin/models' rows


class PrefixedLines:
    """A text stream that writes whole lines to `sink`, each prefixed by the host name."""

    def __init__(self, prefix: str, sink: IO[str], lock: threading.Lock) -> None:
        self.prefix = prefix
        self.sink = sink
        self.lock = lock
        self.partial = ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        self._emit(lines)
        return len(text)

    def flush(self) -> None:
        """Lines are written as they complete; a partial line waits for its end or for `close`."""

    def close(self) -> None:
        if self.partial:
            self._emit([self.partial])
            self.partial = ""

    def _emit(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        with self.lock:
            self.sink.write("".join(f"{self.prefix} | {line}\n" for line in lines))
            self.sink.flush()


def in_parallel(
    items: Sequence[S], work: Callable[[S], T], on_interrupt: Callable[[], None] = lambda: None
) -> list[T]:
    """`work` on every item (a host, or a host's plan) at once, results in the items' order. On Ctrl-C,
    `on_interrupt` must make the workers return (close their connections) before the interrupt goes on."""
    pool = ThreadPoolExecutor(max_workers=max(1, len(items)))
    try:
        return list(pool.map(work, items))
    except KeyboardInterrupt:
        on_interrupt()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_task(
    config: Any, settings: Settings, targets: Sequence[Target], task: str, words: list[str]
) -> list[HostRun]:
    """Run `inv TASK WORDS` in each host's checkout in parallel, output prefixed by host."""
    width = max(len(t.name) for t in targets)
    lock = threading.Lock()
    opened: list[Any] = []

    def one(target: Target) -> HostRun:
        out = PrefixedLines(target.name.ljust(width), sys.stdout, lock)
        err = PrefixedLines(target.name.ljust(width), sys.stderr, lock)
        started = time.monotonic()
        command = remote.invoke_command(target, task, words)
        connection = remote.open_connection(target, config, settings)
        opened.append(connection)
        try:
            result = remote.run_on(
                connection,
                target,
                command,
                out_stream=out,
                err_stream=err,
                in_stream=False,
                env=remote.terminal_env(reserved=width + 3),
            )
            code, last = result.exited, last_line(result.stderr) or last_line(result.stdout)
        except HomelabError as exc:
            code, last = exc.exit_code, exc.message
            err.write(f"error: {exc.message}\n")
        finally:
            connection.close()
            out.close()
            err.close()
        return HostRun(target.name, code == 0, code, time.monotonic() - started, "" if code == 0 else last)

    def hang_up() -> None:  # a host's task stops when it next writes to the closed channel
        for connection in opened:
            connection.close()

    return in_parallel(targets, one, on_interrupt=hang_up)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class ProbeFailure:
    """Why a host has no facts: unreachable, or its checkout could not answer."""

    reachable: bool
    problem: str


def gather_facts(
    config: Any, settings: Settings, targets: Sequence[Target]
) -> list[HostFacts | ProbeFailure]:
    """Each host's facts from one remote command per host (`inv remote.facts --json`), in parallel."""

    def one(target: Target) -> HostFacts | ProbeFailure:
        command = remote.invoke_command(target, FACTS_TASK, ["--json"])
        try:
            result = remote.execute(config, settings, target, command, hide=True, in_stream=False)
        except HomelabError as exc:
            return ProbeFailure(False, exc.message)
        return facts_from(result)

    return in_parallel(targets, one)


def facts_on(connection: Any, target: Target) -> HostFacts | ProbeFailure:
    """One host's facts over an open connection (`inv remote.facts --json` in its checkout)."""
    command = remote.invoke_command(target, FACTS_TASK, ["--json"])
    try:
        return facts_from(remote.run_on(connection, target, command, hide=True, in_stream=False))
    except HomelabError as exc:
        return ProbeFailure(False, exc.message)


def facts_from(result: Any) -> HostFacts | ProbeFailure:
    """The facts in the output of `inv remote.facts --json`, or why there are none."""
    if result.exited:
        return ProbeFailure(True, last_line(result.stderr) or f"{FACTS_TASK} exited {result.exited}")
    try:
        return HostFacts(**json.loads(last_line(result.stdout)))
    except (ValueError, TypeError):
        return ProbeFailure(True, f"no facts from {FACTS_TASK}: update the checkout (remote.sync)")


def local_facts(settings: Settings) -> HostFacts:
    """This host's facts: checkout revision, the server's pidfile, /health and models, free memory and
    disk for models."""
    import psutil

    from tasks.core import server_state

    found = server_state.look(server_state.StateFiles(settings.server.state_dir))
    if isinstance(found, server_state.Running):  # a started server's own address and model
        server, url, model = f"running (pid {found.pid})", found.endpoint.url, found.endpoint.model
    else:
        server = "stale pidfile" if found else "stopped"
        url = server_state.client_url(settings.server.host, settings.server.port)
        model = f"{settings.server.model} (configured)"
    answer = server_state.health(url, timeout_s=2)
    health = "ok" if answer.ok else f"unhealthy ({answer.code})" if answer.code else "down"
    model = str(answer.body.get("model") or "") or model
    return HostFacts(
        _revision(),
        server,
        model,
        health,
        _free_gb(settings.models.cache_dir),
        engine=str(answer.body.get("engine") or ""),
        memory_free_gb=round(psutil.virtual_memory().available / 1e9, 1),
        models=_served_models(settings) if answer.ok else [],
    )


def _served_models(settings: Settings) -> list[dict[str, Any]]:
    """The running server's /admin/models rows; none when it does not answer (its health says why)."""
    from tasks.core import server, server_state

    files = server_state.StateFiles(settings.server.state_dir)
    try:
        return server.admin_rows(server_state.endpoint(files, settings.server), timeout_s=5)
    except HomelabError:
        return []


def facts_json(facts: HostFacts) -> str:
    return json.dumps(asdict(facts))


def _revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "not a git checkout"
    return f"{head}+dirty" if git("status", "--porcelain", "--untracked-files=no") else head


def _free_gb(path: Path) -> float:
    """Free space where models live (the nearest existing folder on the way to it)."""
    while not path.exists():
        path = path.parent
    return round(shutil.disk_usage(path).free / 1e9, 1)
