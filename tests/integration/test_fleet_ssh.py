"""`inv fleet.run`, `inv fleet.status` and `inv fleet.dashboard` against real sshd hosts, one unreachable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from inference_server.ui.access import CSRF_HEADER
from tests.fixtures.sshd import USER, Lab, cli, fleet_dashboard

DOWN = {"down": {"host": "127.0.0.1", "port": 1, "user": USER, "tags": ["lab"]}}


@pytest.fixture
def lab_yaml(ssh_lab: Lab, tmp_path: Path) -> Path:
    return ssh_lab.write_config(tmp_path / "lab.yaml", extra_hosts=DOWN)


def rows(table: str) -> dict[str, list[str]]:
    """The cells of each row of a rich table, by the first cell."""
    found = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) > 1:
            found[cells[0]] = cells
    return found


def row(table: str, host: str) -> list[str]:
    """The cells of a host's row in a rich table."""
    cells = rows(table).get(host)
    assert cells is not None, f"no row for {host} in:\n{table}"
    return cells


def test_fleet_run_reports_every_host_and_fails_if_one_did(ssh_lab: Lab, lab_yaml: Path) -> None:
    done = cli("inv", lab_yaml, "fleet.run", "remote.facts", "--args=--json", "--all")
    assert done.returncode == 1
    for host in ("a", "b", "c"):
        assert re.search(rf"^{host}\s+\| .*\"revision\": \"{ssh_lab.revision(host)}\"", done.stdout, re.M)
        assert row(done.stdout, host)[1:3] == ["ok", "0"]
    down = row(done.stdout, "down")
    assert down[1:3] == ["failed", "255"]
    assert "cannot connect over SSH" in down[4]
    assert done.stderr.strip().endswith("error: remote.facts failed on 1 of 4 hosts — see the table above")


def test_fleet_run_by_hosts_succeeds_when_all_do(lab_yaml: Path) -> None:
    done = cli("inv", lab_yaml, "fleet.run", "models.catalog", "--hosts", "a,c")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^a \| .*smollm2", done.stdout, re.M)
    assert re.search(r"^c \| .*smollm2", done.stdout, re.M)
    assert row(done.stdout, "a")[1] == row(done.stdout, "c")[1] == "ok"


def test_fleet_run_by_tag_runs_only_the_tagged_hosts(lab_yaml: Path) -> None:
    done = cli(
        "inv", lab_yaml, "fleet.run", "models.catalog", "--tag", "b"
    )  # each lab host is tagged its name
    assert done.returncode == 0, done.stderr
    assert row(done.stdout, "b")[1:3] == ["ok", "0"]
    assert not re.search(r"^(a|c|down)\s+\|", done.stdout, re.M)
    assert not {"a", "c", "down"} & rows(done.stdout).keys()


def test_fleet_run_passes_exit_codes_per_host(ssh_lab: Lab, tmp_path: Path) -> None:
    b = ssh_lab.hosts["b"]
    fresh = {
        "fresh": {
            "host": "127.0.0.1",
            "port": b.port,
            "user": USER,
            "checkout": str(b.checkout),
            "python": "/nonexistent/python",
        }
    }
    config = ssh_lab.write_config(tmp_path / "lab.yaml", extra_hosts=fresh)
    done = cli("inv", config, "fleet.run", "models.catalog", "--hosts", "b,fresh")
    assert done.returncode == 1
    assert row(done.stdout, "b")[1:3] == ["ok", "0"]
    failed = row(done.stdout, "fresh")
    assert failed[1:3] == ["failed", "127"]
    assert "/nonexistent/python" in failed[4]


def test_fleet_run_with_accept_new_records_every_hosts_key(ssh_lab: Lab, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    config = ssh_lab.write_config(
        tmp_path / "lab.yaml", known_hosts=str(known_hosts), host_key_policy="accept-new"
    )
    done = cli("inv", config, "fleet.run", "remote.facts", "--all")
    assert done.returncode == 0, done.stdout + done.stderr
    recorded = sorted(known_hosts.read_text().splitlines())
    assert recorded == sorted(host.host_key_line for host in ssh_lab.hosts.values())


def test_fleet_status_shows_each_host_and_who_is_unreachable(ssh_lab: Lab, lab_yaml: Path) -> None:
    # host c's server pidfile names a live process (its sshd) that is not a server it started: stale
    state = ssh_lab.hosts["c"].folder / "state"
    state.mkdir(exist_ok=True)
    sshd = ssh_lab.hosts["c"].process
    assert sshd is not None
    (state / "server.pid").write_text(f"{sshd.pid}\n")
    try:
        done = cli("inv", lab_yaml, "fleet.status")
    finally:
        (state / "server.pid").unlink()
    assert done.returncode == 0, done.stderr
    for host in ("a", "b"):
        cells = row(done.stdout, host)
        assert cells[1:4] == ["yes", ssh_lab.revision(host), "stopped"]
        assert cells[4:6] == ["smollm2 (configured)", "down"]
        assert cells[6].endswith(" GB")
    assert row(done.stdout, "c")[3] == "stale pidfile"
    assert row(done.stdout, "down")[1] == "no"


def test_fleet_dashboard_serves_every_hosts_facts_from_fleet_status(ssh_lab: Lab, lab_yaml: Path) -> None:
    with fleet_dashboard(lab_yaml) as url:
        answer = httpx.get(url.replace("/ui/lab", "/ui/api/lab"), timeout=120).json()
        hosts = {host["name"]: host for host in answer["hosts"]}
        for name in ("a", "b", "c"):
            assert hosts[name]["reachable"] and hosts[name]["revision"] == ssh_lab.revision(name)
            assert hosts[name]["health"] == "down" and hosts[name]["disk_free_gb"] > 0
            assert hosts[name]["memory_free_gb"] > 0
        assert not hosts["down"]["reachable"] and "cannot connect over SSH" in hosts["down"]["problem"]
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and "/ui/static/lab.js" in page.text


def served_models(config: Path, host: str) -> dict[str, dict[str, str]]:
    """`fab -H host server.ps --json`: the host's loaded models by name."""
    shown = cli("fab", config, "-H", host, "server.ps", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    rows = json.loads(shown.stdout)["rows"] if shown.stdout.startswith("{") else []
    return {row["model"].removesuffix(" (default)"): row for row in rows}


def server_pid(config: Path, host: str) -> int:
    shown = cli("fab", config, "-H", host, "server.status", "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return int(json.loads(shown.stdout)["rows"][0]["pid"])


def test_fleet_dashboard_acts_through_the_hosts_own_server_tasks(ssh_lab: Lab, tmp_path: Path) -> None:
    """Load, pin, unload and restart from the lab view, with the page's login cookie and CSRF token;
    `fab -H a server.ps` / `server.status` on the host see each change."""
    config = ssh_lab.write_config(tmp_path / "lab.yaml", server={"api_key": "lab-key"})
    started = cli("fab", config, "-H", "a", "server.start", timeout_s=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        first_pid = server_pid(config, "a")
        with (
            fleet_dashboard(config) as url,
            httpx.Client(base_url=url.removesuffix("/ui/lab"), timeout=300) as client,
        ):
            client.post("/ui/login", data={"key": "lab-key"})
            page = client.get("/ui/lab")
            assert 'data-acting="yes"' in page.text
            found = re.search(r'name="csrf" content="([^"]+)"', page.text)
            assert found, page.text
            token = {CSRF_HEADER: found[1]}
            model = "/ui/api/lab/hosts/a/models/gemma3"
            assert client.post(f"{model}/load").status_code == 403  # no CSRF token: nothing runs
            assert "gemma3" not in served_models(config, "a")

            loaded = client.post(f"{model}/load", headers=token).json()
            assert loaded["ok"] and loaded["message"] == "a: gemma3 loaded", loaded
            assert {m["name"]: m["state"] for m in loaded["host"]["models"]}["gemma3"] == "loaded"
            assert served_models(config, "a")["gemma3"]["until"] != "pinned"
            pinned = client.post(f"{model}/pin", headers=token).json()
            assert pinned["ok"] and pinned["message"] == "a: gemma3 loaded and pinned", pinned
            assert served_models(config, "a")["gemma3"]["until"] == "pinned"
            unloaded = client.post(f"{model}/unload", headers=token).json()
            assert unloaded["ok"] and unloaded["message"] == "a: gemma3 unloaded", unloaded
            assert "gemma3" not in served_models(config, "a")

            unknown = client.post("/ui/api/lab/hosts/a/models/no-such-model/load", headers=token).json()
            assert not unknown["ok"] and "no-such-model" in unknown["message"], unknown

            restarted = client.post("/ui/api/lab/hosts/a/restart", headers=token).json()
            assert restarted["ok"] and restarted["host"]["health"] == "ok", restarted
            new_pid = server_pid(config, "a")
            assert new_pid != first_pid and f"(pid {new_pid}" in restarted["message"]
    finally:
        stopped = cli("fab", config, "-H", "a", "server.stop", timeout_s=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
