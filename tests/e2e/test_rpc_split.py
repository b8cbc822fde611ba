"""One model across hosts: the bundled model split between this host and two rpc-server helpers, each
started through the remote layer on a real sshd host and reached through the keeper's SSH tunnel."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml

from tasks.core import rpc, server_state
from tests.fixtures.sshd import USER, Lab, cli, share_rpc_server, start_lab
from tests.ports import free_port

KEY = "test-key"
PROMPTS = ["Name three colours.", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def helpers() -> Iterator[Lab]:
    """Two sshd hosts whose checkouts share this checkout's rpc-server build."""
    lab = start_lab(["h1", "h2"])
    try:
        share_rpc_server(lab)
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def lab_yaml(helpers: Lab, tmp_path: Path) -> Path:
    """The lab as inventory (plus a host nobody answers for), and this host's server on a free port."""
    gone = {"gone": {"host": "127.0.0.1", "port": free_port(), "user": USER}}
    server = {"state_dir": str(tmp_path / "state"), "port": free_port(), "api_key": KEY}
    return helpers.write_config(tmp_path / "lab.yaml", gone, server | {"context_size": 1024, "slots": 1})


def served_url(lab_yaml: Path) -> str:
    return f"http://127.0.0.1:{yaml.safe_load(lab_yaml.read_text())['server']['port']}"


def answers(url: str) -> list[str]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    return [
        client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": p}], temperature=0, max_tokens=24
        )
        .choices[0]
        .message.content
        or ""
        for p in PROMPTS
    ]


def start(lab_yaml: Path, *args: str) -> None:
    done = cli("inv", lab_yaml, "server.start", *args, timeout_s=300)
    assert done.returncode == 0, done.stdout + done.stderr


def stop(lab_yaml: Path) -> None:
    done = cli("inv", lab_yaml, "server.stop")
    assert done.returncode == 0, done.stderr


def state_dir(lab_yaml: Path) -> Path:
    return Path(yaml.safe_load(lab_yaml.read_text())["server"]["state_dir"])


def server_pid(lab_yaml: Path) -> int:
    found = server_state.look(server_state.StateFiles(state_dir(lab_yaml)))
    assert isinstance(found, server_state.Running)
    return found.pid


def tunnels(lab_yaml: Path) -> rpc.Tunnels:
    found = rpc.running(state_dir(lab_yaml))
    assert found is not None
    return found


def devices(url: str) -> str:
    rows = httpx.get(f"{url}/admin/models", headers={"Authorization": f"Bearer {KEY}"}).json()["models"]
    return next(row["devices"] for row in rows if row["default"])


def helper_rows(lab_yaml: Path) -> dict[str, dict[str, str]]:
    """server.status's RPC helpers table, by host."""
    done = cli("inv", lab_yaml, "server.status", "--json")
    tables = [json.loads(line) for line in done.stdout.splitlines()]
    return {row["host"]: row for t in tables if t["table"] == "RPC helpers" for row in t["rows"]}


def listening(pids: list[int]) -> list[str]:
    """Every address these processes listen on."""
    found = []
    for pid in pids:
        for conn in psutil.Process(pid).connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.append(conn.laddr.ip)
    return found


def test_split_model_answers_as_the_local_one_with_layers_on_each_helper(
    lab_yaml: Path, helpers: Lab
) -> None:
    start(lab_yaml)
    try:
        local = answers(served_url(lab_yaml))
    finally:
        stop(lab_yaml)
    start(lab_yaml, "--rpc", "h1,h2")
    try:
        url = served_url(lab_yaml)
        assert answers(url) == local
        placed = devices(url)  # "CPU: 10 layers 30 MiB, RPC0: ..."
        for device in ("CPU", "RPC0", "RPC1"):
            layers = int(placed.split(f"{device}: ")[1].split(" layers")[0])
            assert layers >= 9, placed  # 30 layers and the output, a third each
        kept = tunnels(lab_yaml)
        first = rpc.helper_figures(kept)
        assert all(h.sent_bytes > 10 * 2**20 for h in first), first  # the weights went over the tunnels
        pids = [kept.pid, *(h.pid for h in first), server_pid(lab_yaml)]
        assert listening(pids), "no listening socket found: the check would pass for nothing"
        assert set(listening(pids)) == {"127.0.0.1"}
        ps = cli("inv", lab_yaml, "server.ps")
        assert "RPC1" in ps.stdout, ps.stdout
        rows = helper_rows(lab_yaml)
        assert sorted(rows) == ["h1", "h2"], rows
        for row in rows.values():  # a third of the weights and KV cache, in the room each has
            assert row["share"].endswith(" MB") and float(row["share"].split()[0]) > 10, row
            assert row["free there"].endswith((" MB", " GB")), row
    finally:
        stop(lab_yaml)
    assert rpc.running(state_dir(lab_yaml)) is None
    # rpc-server -c keeps tensors over 10 MB: the helper holding the output layer has one
    assert any(list((h.folder / "state" / "rpc-cache" / "rpc").iterdir()) for h in helpers.hosts.values())
    start(lab_yaml, "--rpc", "h1,h2")
    try:
        again = rpc.helper_figures(tunnels(lab_yaml))
        assert sum(h.sent_bytes for h in again) < sum(h.sent_bytes for h in first), (first, again)
    finally:
        stop(lab_yaml)


def test_killed_helper_fails_the_stream_and_health(lab_yaml: Path) -> None:
    start(lab_yaml, "--rpc", "h1,h2")
    try:
        url = served_url(lab_yaml)
        victim = rpc.helper_figures(tunnels(lab_yaml))[0]
        body = {"model": "smollm2", "messages": [{"role": "user", "content": "Count to a thousand."}]}
        body |= {"stream": True, "max_tokens": 900, "temperature": 0}
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
        ) as held:
            lines = held.iter_lines()
            next(line for line in lines if line.startswith("data: {"))  # generating
            os.kill(victim.pid, signal.SIGKILL)
            rest = "\n".join(lines)
        assert "h1" in rest and "rpc-server" in rest, rest
        health = httpx.get(f"{url}/health")
        assert health.status_code == 503, health.text
    finally:
        stop(lab_yaml)


def test_unreachable_helper_fails_the_start_in_one_line(lab_yaml: Path) -> None:
    done = cli("inv", lab_yaml, "server.start", "--rpc", "h1,gone")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "gone" in lines[0], done.stderr
    assert rpc.running(state_dir(lab_yaml)) is None  # h1's helper and tunnel went with the keeper
    assert "no server running" in cli("inv", lab_yaml, "server.status").stdout


def test_helper_without_room_for_its_share_fails_the_start_in_one_line(lab_yaml: Path, helpers: Lab) -> None:
    own = helpers.hosts["h2"].checkout / "invoke.yaml"  # h2's own config: 1 MB for models there
    kept = own.read_text()
    config = yaml.safe_load(kept)
    config["server"]["memory_budget_mb"] = 1
    own.write_text(yaml.safe_dump(config))
    try:
        done = cli("inv", lab_yaml, "server.start", "--rpc", "h1,h2", timeout_s=300)
    finally:
        own.write_text(kept)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].count("h2:") == 1, done.stderr
    assert "1.0 MB free" in lines[0] and "another helper" in lines[0], lines[0]
    assert rpc.running(state_dir(lab_yaml)) is None
    assert "no server running" in cli("inv", lab_yaml, "server.status").stdout
