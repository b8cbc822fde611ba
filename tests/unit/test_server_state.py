"""What the server tasks trust about a started server: the pidfile's identity, the start lock, the key
file, the private settings file, and the chat client's one-line failures."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.core import config, files, server_state
from tasks.core import server as core
from tasks.core.console import confirm
from tasks.core.errors import HomelabError
from tasks.core.server_state import Endpoint, Identity, Stale, StateFiles


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A real process that is not the server: it runs until the test closes its stdin."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield process
    assert process.stdin is not None
    process.stdin.close()
    process.wait()


def _recorded_as(process: subprocess.Popen[bytes], how: str) -> str:
    """A pidfile naming `process`: bare (an older pidfile), or recorded for a server that had its pid
    before (another start time, or another command line)."""
    real = Identity.of(process.pid)
    if how == "bare pid":
        return f"{process.pid}\n"
    if how == "reused pid":
        fake = dataclasses.replace(real, create_time=real.create_time - 3600)
    else:
        fake = dataclasses.replace(real, cmdline=(sys.executable, "-m", "inference_server"))
    return json.dumps(dataclasses.asdict(fake))


@pytest.mark.parametrize("how", ["bare pid", "reused pid", "other command line"])
def test_a_pidfile_naming_another_process_is_stale_and_that_process_is_never_signalled(
    bystander: subprocess.Popen[bytes], tmp_path: Path, how: str
) -> None:
    state = StateFiles(tmp_path)
    state.pidfile.write_text(_recorded_as(bystander, how))
    assert core.status(state) == Stale(bystander.pid)
    assert not state.pidfile.exists()

    state.pidfile.write_text(_recorded_as(bystander, how))
    assert core.stop(state, grace_s=1) == Stale(bystander.pid)
    assert bystander.poll() is None  # still running: no SIGTERM, no SIGKILL
    assert not state.pidfile.exists()


def test_the_recorded_process_itself_is_recognised(
    bystander: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    state = StateFiles(tmp_path)
    assert server_state.record(state, bystander.pid, bystander.args)
    found = server_state.look(state)
    assert isinstance(found, server_state.Running) and found.pid == bystander.pid
    assert stat.S_IMODE(state.pidfile.stat().st_mode) == files.PRIVATE


def test_a_start_while_another_start_holds_the_lock_refuses_before_spawning(
    project_config: dict[str, Any], tmp_path: Path
) -> None:
    """The test holds the lock as a first start does between its status check and its pidfile write;
    the second start refuses at once (it does not wait), starting nothing."""
    served = core.served_settings(config.validate(project_config), port=_free_port())
    state = StateFiles(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    with state.lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            with pytest.raises(HomelabError, match=r"another server\.start is under way") as refused:
                core.start(served, state, timeout_s=60)
        finally:
            core.stop(state, grace_s=5)  # before the fix, the second start started a server
    assert "\n" not in refused.value.message and refused.value.fix.startswith("wait for it")
    assert not state.pidfile.exists() and not state.settings.exists()


def test_settings_and_pidfile_writes_are_private_from_creation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wider file already in place does not lend its mode, and a symlink planted where the temp file
    goes is refused rather than written through (the old writer reused `server.json.tmp`)."""
    target = tmp_path / "server.json"
    target.write_text("old")
    target.chmod(0o644)
    old = os.umask(0)  # no umask to narrow it: the mode is what the file is created with
    try:
        files.write_atomically(target, '{"api_key": "k"}', mode=files.PRIVATE)
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() == '{"api_key": "k"}'

    victim = tmp_path / "victim"
    victim.write_text("untouched")
    monkeypatch.setattr(files.secrets, "token_hex", lambda n: "planted")
    (tmp_path / ".server.json.planted.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        files.write_atomically(target, "secret", mode=files.PRIVATE)
    assert victim.read_text() == "untouched" and target.read_text() == '{"api_key": "k"}'


def test_a_symlinked_file_stays_a_symlink_when_rewritten(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "known_hosts"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "known_hosts"
    link.symlink_to(real)
    files.write_atomically(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert [p.name for p in real.parent.iterdir()] == ["known_hosts"]  # no temp file left behind


def test_the_api_key_file_gives_the_key_and_is_refused_when_others_can_read_it(
    project_config: dict[str, Any], tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    key_file.chmod(0o600)
    project_config["server"]["api_key_file"] = str(key_file)
    assert core.served_settings(config.validate(project_config), host="0.0.0.0").api_key == "s3cret"

    key_file.chmod(0o640)
    with pytest.raises(HomelabError, match=r"the API key file is open to others \(mode 640\)") as refused:
        core.served_settings(config.validate(project_config))
    assert refused.value.fix == f"chmod 600 {key_file}"

    project_config["server"]["api_key"] = "also"
    with pytest.raises(HomelabError, match=r"server\.api_key and server\.api_key_file are both set"):
        core.served_settings(config.validate(project_config))
    explicit = core.served_settings(config.validate(project_config), api_key_file="", api_key="flag")
    assert explicit.api_key == "flag"  # an explicit flag beats both settings


def test_no_running_server_means_the_configured_endpoint_without_needing_the_model(
    project_config: dict[str, Any], tmp_path: Path
) -> None:
    project_config["server"].update(model="tinyllama", port=9124, state_dir=str(tmp_path))
    settings = config.validate(project_config)
    assert server_state.endpoint(StateFiles(tmp_path), settings.server) == Endpoint(
        "http://127.0.0.1:9124", "", "tinyllama", settings.server.context_size
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def closing_listener() -> Iterator[str]:
    """A server that reads the request and hangs up without answering."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    thread.join(timeout=30)
    listener.close()


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A server whose kernel accepts the connection and the request, and that never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize(
    ("server", "problem", "fix"),
    [
        ("nothing", "no server at", "start one: inv server.start"),
        ("silent", "did not answer within 0.5 s", "see inv server.status and inv server.logs"),
        ("closing", "the connection to", "see inv server.status and inv server.logs"),
    ],
)
def test_chat_turns_every_connection_failure_into_one_line(
    server: str, problem: str, fix: str, request: pytest.FixtureRequest
) -> None:
    url = {
        "nothing": lambda: f"http://127.0.0.1:{_free_port()}",
        "silent": lambda: request.getfixturevalue("silent_listener"),
        "closing": lambda: request.getfixturevalue("closing_listener"),
    }[server]()
    with pytest.raises(HomelabError) as failed:
        core.chat(Endpoint(url, "", "smollm2"), "hi", 4, 0.0, on_text=print, timeout_s=0.5)
    assert problem in failed.value.problem and url in failed.value.problem
    assert failed.value.fix == fix and "\n" not in failed.value.message


def test_confirm_without_a_terminal_refuses_at_once_unless_told_yes() -> None:
    assert not sys.stdin.isatty()  # pytest's captured stdin
    assert confirm("delete everything", assume_yes=True)
    with pytest.raises(HomelabError, match=r"not confirmed: delete everything \(no terminal to ask\)"):
        confirm("delete everything")
