"""`inv fleet.deploy` on the real sshd lab: hosts whose checkouts are clones of one upstream, servers on
the bundled model (one slot, 512 tokens of context: the base commit's invoke.yaml says so)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tasks.core import gateway
from tests.fixtures.gitrepos import commit, git
from tests.fixtures.sshd import USER, Lab, cli, copy_checkout
from tests.ports import free_port

HOSTS = ("a", "b", "c")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """A bare upstream of this checkout's files with branches base, good (a harmless change), broken
    (good plus a server that exits at start) and deps (base plus a pyproject.toml change); the work
    clone they were made in, and each branch's commit."""
    root = tmp_path_factory.mktemp("deploy")
    work = root / "work"
    copy_checkout(work)
    settings = (work / "invoke.yaml").read_text()
    light = settings.replace("  context_size: 8192 ", "  context_size: 512  ").replace(
        "  slots: 4 ", "  slots: 1 "
    )
    assert light != settings
    git(work, "add", "-A")  # the working tree's files, uncommitted work included, as copied
    commits = {"base": commit(work, {"invoke.yaml": light}, "deploy base")}
    git(work, "branch", "-f", "base")
    readme = (work / "README.md").read_text()
    commits["good"] = commit(work, {"README.md": readme + "\nA good change.\n"}, "a good change")
    git(work, "branch", "-f", "good")
    main = (work / "inference_server/__main__.py").read_text()
    future = "from __future__ import annotations\n"
    broken = main.replace(future, future + 'raise SystemExit("broken build")\n', 1)
    commits["broken"] = commit(work, {"inference_server/__main__.py": broken}, "a broken server")
    git(work, "branch", "-f", "broken")
    git(work, "checkout", "-q", "-b", "deps", "base")
    pyproject = (work / "pyproject.toml").read_text()
    commits["deps"] = commit(work, {"pyproject.toml": pyproject + "# a new dependency\n"}, "deps")
    git(root, "clone", "-q", "--bare", str(work), "upstream.git")
    yield work, commits


@pytest.fixture
def deploy_lab(ssh_lab: Lab, upstream: tuple[Path, dict[str, str]], tmp_path: Path) -> Iterator[Path]:
    """Hosts a, b, c (the lab's sshd) with fresh checkouts on branch base; the config file for them.
    Every server a test starts is stopped afterwards."""
    work, _ = upstream
    inventory = {}
    for name in HOSTS:
        checkout = tmp_path / name
        git(tmp_path, "clone", "-q", "-b", "base", str(work.parent / "upstream.git"), str(checkout))
        inventory[name] = {
            "host": "127.0.0.1",
            "port": ssh_lab.hosts[name].port,
            "user": USER,
            "checkout": str(checkout),
            "python": sys.executable,
        }
    config = ssh_lab.write_config(tmp_path / "lab.yaml", extra_hosts=inventory)
    settings = yaml.safe_load(config.read_text())
    settings["git"] = {"repo": str(work)}  # where --rev is resolved: the clone the branches came from
    config.write_text(yaml.safe_dump(settings))
    yield config
    for name in HOSTS:
        cli("fab", config, "-H", name, "server.stop")


def head(config: Path, host: str) -> str:
    checkout = yaml.safe_load(config.read_text())["hosts"][host]["checkout"]
    return git(Path(checkout), "rev-parse", "HEAD")


def start_server(config: Path, host: str) -> int:
    started = cli("fab", config, "-H", host, "server.start", timeout_s=300)
    assert started.returncode == 0, started.stdout + started.stderr
    return server_pid(config, host)


def server_pid(config: Path, host: str) -> int:
    shown = cli("fab", config, "-H", host, "server.status", "--json")
    assert shown.returncode == 0, shown.stderr
    return int(json.loads(shown.stdout)["rows"][0]["pid"])


def deploy(config: Path, *args: str) -> tuple[int, dict[str, dict[str, str]], str]:
    """Run fleet.deploy --json: exit code, the last table's rows by host, and everything said."""
    done = cli("inv", config, "fleet.deploy", "--json", *args, timeout_s=600)
    table = json.loads(done.stdout.strip().splitlines()[-1])
    return done.returncode, {row["host"]: row for row in table["rows"]}, done.stdout + done.stderr


def test_a_good_commit_rolls_through_every_host(
    deploy_lab: Path, upstream: tuple[Path, dict[str, str]]
) -> None:
    commits = upstream[1]
    before = {host: start_server(deploy_lab, host) for host in ("a", "b")}  # c's server stays stopped
    code, rows, said = deploy(deploy_lab, "--rev", "good", "--hosts", "a,b,c")
    assert code == 0, said
    for host in HOSTS:
        assert rows[host]["result"] == "updated", said
        assert (rows[host]["from"], rows[host]["to"]) == (commits["base"][:7], commits["good"][:7])
        assert rows[host]["bootstrap?"] == "no"
        assert head(deploy_lab, host) == commits["good"]
    assert rows["a"]["server"] == rows["b"]["server"] == "restarted"
    assert rows["c"]["server"] == "stopped"
    for host, pid in before.items():
        assert server_pid(deploy_lab, host) != pid
    assert cli("fab", deploy_lab, "-H", "c", "server.health").returncode != 0  # not started by deploy


def test_a_commit_that_breaks_the_server_rolls_the_first_host_back(
    deploy_lab: Path, upstream: tuple[Path, dict[str, str]]
) -> None:
    commits = upstream[1]
    start_server(deploy_lab, "a")
    code, rows, said = deploy(deploy_lab, "--rev", "broken", "--hosts", "a,b,c")
    assert code == 1, said
    assert rows["a"]["result"] == "rolled back"
    assert rows["a"]["server"] == f"restarted on {commits['base'][:7]}"
    assert rows["a"]["last error"].startswith("server.restart: ")
    assert "broken build" in said, said  # the server log's last lines, as server.restart shows them
    assert rows["b"]["result"] == rows["c"]["result"] == "not started"
    for host in HOSTS:
        assert head(deploy_lab, host) == commits["base"]
    healthy = cli("fab", deploy_lab, "-H", "a", "server.health")
    assert healthy.returncode == 0, healthy.stderr


def test_dry_run_shows_the_bootstrap_and_refuses_a_dirty_checkout(
    deploy_lab: Path, upstream: tuple[Path, dict[str, str]]
) -> None:
    commits = upstream[1]
    b = Path(yaml.safe_load(deploy_lab.read_text())["hosts"]["b"]["checkout"])
    (b / "catalog.yaml").write_text((b / "catalog.yaml").read_text() + "# edited on the host\n")
    code, rows, said = deploy(deploy_lab, "--rev", "deps", "--hosts", "a,b", "--dry-run")
    assert code == 1
    assert rows["a"]["bootstrap?"] == "yes" and rows["a"]["plan"] == "fast-forward"
    assert rows["a"]["server"] == "stopped"
    assert "has uncommitted changes" in rows["b"]["plan"]
    refusal = f"error: 1 of 2 hosts cannot take {commits['deps'][:7]}: nothing was changed"
    assert said.strip().endswith(f"{refusal} — see the plan above")
    assert head(deploy_lab, "a") == head(deploy_lab, "b") == commits["base"]


@pytest.mark.skipif(not gateway._have_haproxy(), reason="haproxy is not installed")
def test_a_gateway_in_front_drains_the_host_being_updated(
    deploy_lab: Path, upstream: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """While a host is updated the gateway routes nothing to it; afterwards it takes requests again."""
    start_server(deploy_lab, "a")
    shown = cli("fab", deploy_lab, "-H", "a", "server.status", "--json")
    settings = yaml.safe_load(deploy_lab.read_text())
    settings["hosts"]["a"]["url"] = json.loads(shown.stdout)["rows"][0]["url"]
    settings["lab_gateway"] = {"port": free_port(), "state_dir": str(tmp_path / "gateway"), "poll_s": 600}
    deploy_lab.write_text(yaml.safe_dump(settings))
    started = cli("inv", deploy_lab, "gateway.start")
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        code, rows, said = deploy(deploy_lab, "--rev", "good", "--hosts", "a")
        assert code == 0 and rows["a"]["result"] == "updated", said
        drained, resumed = [line for line in said.splitlines() if "gateway: a: " in line]
        assert drained.endswith("gateway: a: drained (0 requests in flight)"), said
        assert "drained" not in resumed, said
        status = cli("inv", deploy_lab, "gateway.status", "--json")
        hosts = {row["host"]: row for row in json.loads(status.stdout)["rows"]}
        assert hosts["a"]["state"] != "drained", status.stdout
    finally:
        cli("inv", deploy_lab, "gateway.stop")
