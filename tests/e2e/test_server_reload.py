"""`inv server.run --reload`: a real server that a change under inference_server/ restarts.

The run is on a copy of the checkout, so the test edits server code nobody else imports; every wait
is on a line the run prints (the server's own startup line, the task's reload line)."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.core import server_state
from tasks.core.processes import alive
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 180  # only a guard against a hang: each wait ends on a line the run prints


class Lines:
    """The run's output, line by line, read on a thread so a wait can give up."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert process.stdout is not None
        threading.Thread(
            target=lambda: [self._queue.put(line) for line in process.stdout], daemon=True
        ).start()  # type: ignore[union-attr]

    def wait_for(self, pattern: str) -> re.Match[str]:
        while True:
            line = self._queue.get(timeout=WAIT_S)
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The project's tracked files but the tests, as a checkout of its own."""
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    copy = tmp_path / "checkout"
    for name in listed.stdout.splitlines():
        if not name.startswith("tests/"):
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


@pytest.fixture
def reloading(checkout: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines, str]]:
    port = free_port()
    command = [sys.executable, "-m", "invoke", "--search-root", str(checkout)]
    command += ["server.run", "--reload", "--port", str(port), "--context-size", "1024", "--slots", "1"]
    env = {**os.environ, "INVOKE_SERVER_STATE_DIR": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process, Lines(process), server_state.client_url("127.0.0.1", port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_changed_server_file_restarts_the_server_a_broken_one_waits_and_ctrl_c_stops_both(
    reloading: tuple[subprocess.Popen[str], Lines, str], checkout: Path
) -> None:
    process, lines, url = reloading
    first = int(lines.wait_for(r"ready in [\d.]+ s at \S+ \(pid (\d+)\)")[1])
    assert server_state.health(url).ok

    changed = checkout / "inference_server" / "durations.py"
    changed.write_text(changed.read_text() + "\n# edited\n")
    lines.wait_for(r"reloading: inference_server/durations\.py changed")
    second = int(lines.wait_for(r"reloaded in [\d.]+ s at \S+ \(pid (\d+)\)")[1])

    assert second != first and not alive(first)
    assert server_state.health(url).ok

    changed.write_text(changed.read_text() + "\nthis is not python\n")
    lines.wait_for(
        r"not serving: the server exited with code 1 \(fix the code: the next change restarts it\)"
    )
    changed.write_text(changed.read_text().replace("\nthis is not python\n", "\n"))
    second = int(lines.wait_for(r"reloaded in [\d.]+ s at \S+ \(pid (\d+)\)")[1])
    assert server_state.health(url).ok
    process.send_signal(signal.SIGINT)  # what Ctrl-C sends the task
    assert process.wait(WAIT_S) == 130
    assert not alive(second)
    assert not (checkout.parent / "state" / "run.json").exists()
