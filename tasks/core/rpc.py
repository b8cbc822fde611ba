"""One model across hosts: llama.cpp's rpc-server on helper hosts, reached through SSH tunnels.

llama.cpp calls its RPC backend insecure (no authentication; it has had a remote-code-execution bug),
so nothing here listens off loopback: each helper runs `inv server.rpc-helper` through the remote
layer, which binds rpc-server to 127.0.0.1 there, and the server reaches it through a port forward on
127.0.0.1 here, over a host-key-checked SSH connection (tasks.core.ssh, every ProxyJump hop too).

The tunnels live in a tunnel keeper: a process forked from `inv server.start` before the server
starts, in its own session, so the forwards outlive the short-lived `inv` (an `ssh -L` would need
the project's keys, ssh_config and known_hosts translated into ssh options; this reuses the one
connection code path). Each helper's rpc-server runs on a pty of the keeper's connection, so it ends
when the keeper does or the connection drops (SIGHUP). When a helper's rpc-server exits or its
connection drops, the keeper says so on its watch socket and closes it; the server's engine then
fails its requests and /health turns 503 (llama.cpp aborts the process on a broken RPC socket, so
the forwards are never closed under it while the server lives).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.config import PROJECT_ROOT, Settings
from tasks.core.errors import HomelabError
from tasks.core.processes import alive

if TYPE_CHECKING:  # remote imports paramiko: only opening tunnels needs it, not stopping them
    from tasks.core import remote

READY_TIMEOUT_S = 60.0  # a helper's `inv` and rpc-server starting, and the first probe through it
STARTED = "rpc-server started"  # the helper's line before it becomes rpc-server: pid and port follow
OK = "ok"  # the watch socket's first line while every helper is there (else why one is not)
STATS = "stats"  # asked on the watch socket: the helpers with their byte counts, as JSON


def llama_cpp_version() -> str:
    return metadata.version("llama-cpp-python")


def rpc_server_binary(root: Path = PROJECT_ROOT) -> Path:
    """Where bootstrap.sh builds rpc-server from the installed llama-cpp-python's own llama.cpp."""
    return root / ".tools" / f"llama.cpp-{llama_cpp_version()}" / "bin" / "rpc-server"


def exec_helper(state_dir: Path, budget_bytes: int) -> None:
    """On a helper host: become rpc-server on a free loopback port, with its weight cache in the
    server's state dir; the first line says the pid, the port and the room here (`free_bytes`)."""
    binary = rpc_server_binary()
    if not binary.exists():
        raise HomelabError(f"no rpc-server at {binary}", "build it: bash bootstrap.sh")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LLAMA_CACHE": str(state_dir / "rpc-cache")}
    print(f"{STARTED} {os.getpid()} {port} {free_bytes(budget_bytes)}", flush=True)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.execve(binary, [str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", str(threads), "-c"], env)


def free_bytes(budget_bytes: int) -> int:
    """The memory a model's layers may take on this host: what it has available, capped by its own
    server.memory_budget_mb when set. Not llama.cpp's device query: for a CPU device (a helper without
    a GPU) it reports all RAM as free, and this rpc-server has no -m flag to cap it."""
    import psutil

    available = int(psutil.virtual_memory().available)
    return min(available, budget_bytes) if budget_bytes else available


@dataclass
class Helper:
    """One helper as the keeper runs it: the rpc-server there and our end of its tunnel."""

    host: str
    pid: int  # rpc-server's, on the helper
    port: int  # rpc-server's, on the helper's loopback
    local: str = ""  # 127.0.0.1:PORT here
    sent_bytes: int = 0  # through the tunnel to rpc-server (weights, then activations)
    free_bytes: int = 0  # the room there when rpc-server started (tasks.core.rpc.free_bytes)
    share_bytes: int = 0  # what it holds of the model (its layers' weights and KV cache)


@dataclass
class Tunnels:
    """What the keeper reports once every helper answers: its pid, the endpoints and the watch socket."""

    pid: int
    watch: str
    helpers: list[Helper] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [helper.local for helper in self.helpers]


def keeper_file(state_dir: Path) -> Path:
    return state_dir / "rpc-tunnels.json"


def open_tunnels(
    config: Any, settings: Settings, hosts: list[str], state_dir: Path, share_bytes: int
) -> Tunnels:
    """Fork the tunnel keeper, wait until every helper answers through its tunnel, record it; a helper
    that cannot be reached or started, or has no room for its `share_bytes` of the model, fails the
    whole start with one line naming it."""
    from tasks.core import remote

    targets = [remote.resolve(name, settings) for name in hosts]
    state_dir.mkdir(parents=True, exist_ok=True)
    watch = state_dir / "rpc.sock"
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the keeper
        os.close(reader)
        os.setsid()
        code = 0
        try:
            _keep(config, settings, targets, share_bytes, watch, os.fdopen(writer, "w"))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        answer = pipe.readline()
    report: dict[str, Any] = json.loads(answer) if answer else {"problem": "the tunnel keeper died"}
    if "problem" in report:
        _end(pid)
        raise HomelabError(report["problem"], report.get("fix", ""))
    tunnels = Tunnels(pid, str(watch), [Helper(**h) for h in report["helpers"]])
    keeper_file(state_dir).write_text(json.dumps(asdict(tunnels)))
    return tunnels


def helper_figures(tunnels: Tunnels) -> list[Helper]:
    """The helpers as the keeper sees them now (bytes sent so far)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(tunnels.watch)
        conn.sendall(f"{STATS}\n".encode())
        lines = conn.makefile()
        answer = lines.readline()
        if answer.strip() == OK:
            answer = lines.readline()
    if not answer.startswith("["):
        raise HomelabError(f"the RPC helpers are lost: {answer.strip() or 'the keeper stopped'}")
    return [Helper(**h) for h in json.loads(answer)]


def running(state_dir: Path) -> Tunnels | None:
    """The tunnel keeper recorded in the state dir, if it still runs."""
    try:
        found = json.loads(keeper_file(state_dir).read_text())
    except (FileNotFoundError, ValueError):
        return None
    tunnels = Tunnels(found["pid"], found["watch"], [Helper(**h) for h in found["helpers"]])
    return tunnels if alive(tunnels.pid) else None


def close_tunnels(state_dir: Path) -> Tunnels | None:
    """Stop the keeper (its helpers' rpc-servers end with their connections); what was running."""
    tunnels = running(state_dir)
    if tunnels is not None:
        _end(tunnels.pid)
    keeper_file(state_dir).unlink(missing_ok=True)
    return tunnels


def _end(pid: int) -> None:
    """SIGTERM the keeper and reap it (it is our child when the start fails)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # not ours: wait on the pid itself
        while alive(pid):
            select.select([], [], [], 0.05)


# -- the keeper process -------------------------------------------------------------------------


def _keep(
    config: Any, settings: Settings, targets: list[remote.Target], share_bytes: int, watch: Path, ready: Any
) -> None:
    """Start every helper, forward a loopback port to each, report on `ready`, then watch them."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    helpers: list[tuple[Helper, Any, Any]] = []
    try:
        for target in targets:
            helpers.append(_start_helper(config, settings, target, share_bytes))
    except HomelabError as exc:
        ready.write(json.dumps({"problem": exc.problem, "fix": exc.fix}) + "\n")
        ready.close()
        return
    watch.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(watch))
    listener.listen()
    watchers: list[socket.socket] = []
    lost: list[str] = []
    guard = threading.Lock()

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            with guard:
                if lost:
                    conn.sendall(f"{lost[0]}\n".encode())
                    conn.close()
                    continue
                watchers.append(conn)
                conn.sendall(f"{OK}\n".encode())
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def answer(conn: socket.socket) -> None:
        """A watcher that writes asks for the helpers' figures (the engine only reads)."""
        asked = conn.makefile().readline()
        with guard:
            if conn not in watchers:
                return
            watchers.remove(conn)
        if asked.strip() == STATS:
            conn.sendall(json.dumps([asdict(h) for h, _, _ in helpers]).encode() + b"\n")
        conn.close()

    def lose(reason: str) -> None:
        with guard:
            if not lost:
                lost.append(reason)
            for conn in watchers:
                with contextlib.suppress(OSError):  # a watcher that went away needs no telling
                    conn.sendall(f"{lost[0]}\n".encode())
                conn.close()
            watchers.clear()

    threading.Thread(target=accept, daemon=True).start()
    for helper, _, channel in helpers:
        threading.Thread(target=_await_exit, args=(helper, channel, lose), daemon=True).start()
    ready.write(json.dumps({"helpers": [asdict(h) for h, _, _ in helpers]}) + "\n")
    ready.close()
    stop.wait()
    for _, connection, _ in helpers:
        connection.close()
    watch.unlink(missing_ok=True)


def _start_helper(
    config: Any, settings: Settings, target: remote.Target, share_bytes: int
) -> tuple[Helper, Any, Any]:
    """rpc-server on `target` (through `inv server.rpc-helper` in its checkout, on a pty so it ends
    with the connection), refused if its share does not fit there, and a forward from a loopback port
    here to it, probed once."""
    from tasks.core import remote, ssh

    connection = remote.open_connection(target, config, settings)
    try:
        connection.open()
        transport = connection.client.get_transport()
        transport.set_keepalive(2)  # a dropped network shows as a dropped connection within seconds
        # RPC is request and answer, a few per token: Nagle's algorithm would hold each small message
        # back for the last one's ACK (tens of ms a token)
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = transport.open_session()
        channel.get_pty()
        channel.exec_command(remote.invoke_command(target, "server.rpc-helper", []))
        output = channel.makefile("r")
        seen: list[str] = []
        channel.settimeout(READY_TIMEOUT_S)
        for line in output:
            seen.append(line.strip())
            if line.startswith(STARTED):
                pid, port, free = map(int, line.split()[-3:])
                break
        else:
            said = " / ".join(s for s in seen if s)[-300:] or "no output"
            raise HomelabError(f"{target.name}: rpc-server did not start ({said})", "bash bootstrap.sh there")
        channel.settimeout(None)
        helper = Helper(target.name, pid, port, free_bytes=free, share_bytes=share_bytes)
        refuse_unless_room(helper)
        _probe(transport, helper, channel)
        helper.local = _forward(transport, helper)
        return helper, connection, channel
    except HomelabError:
        connection.close()
        raise
    except Exception as exc:
        connection.close()
        error = ssh.describe_failure(exc, target.name)
        if error is None:
            raise HomelabError(f"{target.name}: cannot start rpc-server ({exc})") from None
        raise error from None


def refuse_unless_room(helper: Helper) -> None:
    """Refuse a helper whose share of the model does not fit the room it has, before the model loads
    rather than when that host runs out of memory."""
    from tasks.core.catalog import describe_size

    if helper.share_bytes > helper.free_bytes:
        raise HomelabError(
            f"{helper.host}: its share of the model needs {describe_size(helper.share_bytes)} but it has "
            f"{describe_size(helper.free_bytes)} free (its available memory, or its server.memory_budget_mb)",
            "add another helper to --rpc (each then holds fewer layers), free memory there, "
            "or serve a smaller model",
        )


def _probe(transport: Any, helper: Helper, channel: Any) -> None:
    """Until rpc-server accepts a connection on its port (it binds after finding its devices)."""
    stopped = threading.Event()
    for _ in range(int(READY_TIMEOUT_S * 10)):
        if channel.exit_status_ready():
            raise HomelabError(
                f"{helper.host}: rpc-server exited at start", "run inv server.rpc-helper there"
            )
        try:
            transport.open_channel("direct-tcpip", ("127.0.0.1", helper.port), ("127.0.0.1", 0)).close()
            return
        except Exception:
            stopped.wait(0.1)  # rpc-server still finding its devices
    raise HomelabError(f"{helper.host}: rpc-server never listened on 127.0.0.1:{helper.port}")


def _forward(transport: Any, helper: Helper) -> str:
    """Listen on a free loopback port here; each connection becomes a direct-tcpip channel to rpc-server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        while True:
            local, _ = listener.accept()
            local.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tunnel = transport.open_channel("direct-tcpip", ("127.0.0.1", helper.port), local.getpeername())
            threading.Thread(target=_pump, args=(local, tunnel, helper), daemon=True).start()
            threading.Thread(target=_pump, args=(tunnel, local, None), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{listener.getsockname()[1]}"


def _pump(source: Any, sink: Any, counted: Helper | None) -> None:
    """Copy until the source ends. The server closing its end closes the tunnel (rpc-server serves one
    client at a time: it must see the end); the tunnel ending leaves the server's end open, since
    closing it under llama.cpp would abort the server (the watch socket tells it instead)."""
    with contextlib.suppress(OSError, EOFError):
        while data := source.recv(1 << 20):
            sink.sendall(data)
            if counted is not None:
                counted.sent_bytes += len(data)
    if counted is not None:  # the source was the server's end
        sink.close()


def _await_exit(helper: Helper, channel: Any, lose: Callable[[str], None]) -> None:
    """Wait for the helper's rpc-server to end (or its connection to drop) and say which."""
    status = channel.recv_exit_status()
    if status == -1:
        lose(f"{helper.host}: the SSH connection to the helper dropped or rpc-server was killed")
    else:
        lose(f"{helper.host}: rpc-server exited with code {status}")
