"""`fab -H host TASK` against real sshd hosts: delegation, exit codes, quoting, host keys, bootstrap/sync."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.server import RunningServer
from tests.fixtures.sshd import ROOT, USER, Lab, cli, keygen

DOWN = {"down": {"host": "127.0.0.1", "port": 1, "user": USER}}  # nothing listens on port 1


@pytest.fixture
def lab_yaml(ssh_lab: Lab, tmp_path: Path) -> Path:
    return ssh_lab.write_config(tmp_path / "lab.yaml", extra_hosts=DOWN)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def test_fab_runs_the_task_in_the_hosts_own_checkout(ssh_lab: Lab, lab_yaml: Path) -> None:
    done = cli("fab", lab_yaml, "-H", "a", "remote.facts", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revision"] == ssh_lab.revision("a")


def test_fab_streams_a_models_task_back(lab_yaml: Path) -> None:
    done = cli("fab", lab_yaml, "-H", "b", "models.catalog")
    assert done.returncode == 0, done.stderr
    assert "Model catalog" in done.stdout
    assert "smollm2" in done.stdout


def test_hostile_argument_arrives_as_one_word_and_runs_nothing(
    ssh_lab: Lab, lab_yaml: Path, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    hostile = f"x'; touch {pwned}; echo ' $(touch {pwned}) `touch {pwned}` \"; touch {pwned}"
    # remote.sync on host a receives the string as its HOST argument and cannot resolve it
    done = cli("fab", lab_yaml, "-H", "a", "remote.sync", hostile)
    assert done.returncode == 255
    assert one_line(done.stderr).startswith(f"error: {hostile!r}: not a host or user name")
    # the same through fleet.run, whose --args is split like a shell line and quoted again per word
    done = cli("inv", lab_yaml, "fleet.run", "remote.sync", "--args", shlex.quote(hostile), "--hosts", "a")
    assert done.returncode == 1
    assert f"a | error: {hostile!r}: not a host or user name" in done.stdout + done.stderr
    assert not pwned.exists()


def test_remote_exit_code_becomes_fabs(ssh_lab: Lab, tmp_path: Path) -> None:
    # a host whose interpreter is missing (not bootstrapped yet): its shell exits 127
    host = ssh_lab.hosts["a"]
    fresh = {"fresh": {"host": "127.0.0.1", "port": host.port, "user": USER, "python": "/nonexistent/python"}}
    config = ssh_lab.write_config(tmp_path / "lab.yaml", extra_hosts=fresh, checkout=str(host.checkout))
    done = cli("fab", config, "-H", "fresh", "models.catalog")
    assert done.returncode == 127
    assert "/nonexistent/python" in done.stderr


def test_unreachable_host_is_one_line_and_ssh_exit_code(lab_yaml: Path) -> None:
    done = cli("fab", lab_yaml, "-H", "down", "models.catalog")
    assert done.returncode == 255
    assert (
        one_line(done.stderr) == "error: down: cannot connect over SSH — is sshd running there, on that port?"
    )


def test_unknown_host_key_is_refused_with_how_to_trust_it(ssh_lab: Lab, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    config = ssh_lab.write_config(tmp_path / "lab.yaml", known_hosts=str(known_hosts))
    done = cli("fab", config, "-H", "a", "models.catalog")
    assert done.returncode == 255
    line = one_line(done.stderr)
    port = ssh_lab.hosts["a"].port
    assert line.startswith(f"error: unknown SSH host key for [127.0.0.1]:{port} (ssh-ed25519 SHA256:")
    assert f"ssh-keyscan -p {port} 127.0.0.1 >> {known_hosts}" in line
    assert "remote.host_key_policy: accept-new" in line
    assert not known_hosts.exists()


def test_accept_new_trusts_a_first_key_then_enforces_it(ssh_lab: Lab, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    config = ssh_lab.write_config(
        tmp_path / "lab.yaml", known_hosts=str(known_hosts), host_key_policy="accept-new"
    )
    assert cli("fab", config, "-H", "a", "models.catalog").returncode == 0
    assert known_hosts.read_text() == ssh_lab.hosts["a"].host_key_line + "\n"

    keygen(tmp_path / "impostor")
    impostor = (tmp_path / "impostor.pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{ssh_lab.hosts['a'].port} {impostor[0]} {impostor[1]}\n")
    done = cli("fab", config, "-H", "a", "models.catalog")
    assert done.returncode == 255
    assert "SSH host key CHANGED" in one_line(done.stderr)


def jump_config(ssh_lab: Lab, tmp_path: Path, known_hosts: Path, **remote: object) -> tuple[Path, Path]:
    """An ssh_config where `final` is host b reached through host a (ProxyJump), and a lab config.

    The hop is named `localhost`: fabric drops a ProxyJump whose host name equals the target's
    (it takes it for a wildcard pointing at itself), whatever the ports."""
    jump, final = ssh_lab.hosts["a"], ssh_lab.hosts["b"]
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        f"Host final\n  HostName 127.0.0.1\n  Port {final.port}\n  User {USER}\n"
        f"  ProxyJump {USER}@localhost:{jump.port}\n"
    )
    config = ssh_lab.write_config(
        tmp_path / "lab.yaml",
        known_hosts=str(known_hosts),
        checkout=str(final.checkout),
        python=sys.executable,
        **remote,
    )
    settings = yaml.safe_load(config.read_text())
    settings["ssh_config_path"] = str(ssh_config)
    config.write_text(yaml.safe_dump(settings))
    return config, ssh_config


@pytest.mark.parametrize("policy", ["strict", "accept-new"])
def test_every_proxyjump_hop_gets_our_host_key_policy(ssh_lab: Lab, tmp_path: Path, policy: str) -> None:
    jump, final = ssh_lab.hosts["a"], ssh_lab.hosts["b"]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(final.host_key_line + "\n")  # the jump host's key is unknown
    config, ssh_config = jump_config(ssh_lab, tmp_path, known_hosts, host_key_policy=policy)
    done = cli("fab", config, "-S", str(ssh_config), "-H", "final", "remote.facts", "--json")
    if policy == "strict":
        assert done.returncode == 255
        assert one_line(done.stderr).startswith(f"error: unknown SSH host key for [localhost]:{jump.port} ")
        assert known_hosts.read_text() == final.host_key_line + "\n"
    else:  # the jump host's key is recorded, as ssh's accept-new does
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["revision"] == ssh_lab.revision("b")
        jump_line = jump.host_key_line.replace("[127.0.0.1]", "[localhost]")
        assert known_hosts.read_text() == f"{final.host_key_line}\n{jump_line}\n"


def test_accept_new_keeps_a_symlinked_known_hosts_a_symlink_and_its_mode(
    ssh_lab: Lab, tmp_path: Path
) -> None:
    real = tmp_path / "dotfiles" / "known_hosts"
    real.parent.mkdir()
    real.write_text("# shared known hosts\n")
    real.chmod(0o644)
    link = tmp_path / "known_hosts"
    link.symlink_to(real)
    config = ssh_lab.write_config(tmp_path / "lab.yaml", known_hosts=str(link), host_key_policy="accept-new")
    done = cli("fab", config, "-H", "a", "remote.facts", "--json")
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and link.resolve() == real
    assert real.read_text() == f"# shared known hosts\n{ssh_lab.hosts['a'].host_key_line}\n"
    assert real.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in real.parent.iterdir()) == ["known_hosts"]  # no temporary file left


def test_ssh_config_alias_user_key_and_known_hosts_are_used(ssh_lab: Lab, tmp_path: Path) -> None:
    host = ssh_lab.hosts["c"]
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        f"Host labalias\n  HostName 127.0.0.1\n  Port {host.port}\n  User {USER}\n"
        f"  IdentityFile {ssh_lab.key}\n  UserKnownHostsFile {ssh_lab.known_hosts}\n"
    )
    config = ssh_lab.write_config(
        tmp_path / "lab.yaml",
        known_hosts=str(tmp_path / "unused"),
        checkout=str(host.checkout),
        python=sys.executable,
    )
    settings = yaml.safe_load(config.read_text())
    settings["ssh_config_path"] = str(ssh_config)  # what inv reads; fab takes -S
    settings["connect_kwargs"] = {"look_for_keys": False, "allow_agent": False}
    config.write_text(yaml.safe_dump(settings))
    done = cli("fab", config, "-S", str(ssh_config), "-H", "labalias", "remote.facts", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revision"] == ssh_lab.revision("c")
    done = cli("inv", config, "fleet.run", "remote.facts", "--hosts", "labalias")
    assert done.returncode == 0, done.stderr


def test_plain_user_at_host_port_uses_the_remote_defaults(ssh_lab: Lab, tmp_path: Path) -> None:
    host = ssh_lab.hosts["b"]
    config = ssh_lab.write_config(tmp_path / "lab.yaml", checkout=str(host.checkout), python=sys.executable)
    done = cli("fab", config, "-H", f"{USER}@127.0.0.1:{host.port}", "remote.facts", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revision"] == ssh_lab.revision("b")


def git(*args: str, cwd: Path) -> str:
    author = ["-c", "user.name=lab", "-c", "user.email=lab@localhost"]
    return subprocess.run(["git", *author, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_bootstrap_clones_then_sync_fast_forwards(ssh_lab: Lab, tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.git"
    git("clone", "-q", "--bare", str(ROOT), str(upstream), cwd=tmp_path)
    fresh = tmp_path / "fresh-checkout"
    port = ssh_lab.hosts["a"].port
    config = ssh_lab.write_config(
        tmp_path / "lab.yaml",
        extra_hosts={"fresh": {"host": "127.0.0.1", "port": port, "user": USER, "checkout": str(fresh)}},
        repo_url=str(upstream),
    )
    done = cli("inv", config, "remote.bootstrap", "fresh", "--no-install")
    assert done.returncode == 0, done.stderr
    assert (fresh / "bootstrap.sh").is_file()

    work = tmp_path / "work"
    git("clone", "-q", str(upstream), str(work), cwd=tmp_path)
    git("commit", "-q", "--allow-empty", "-m", "catalog update", cwd=work)
    git("push", "-q", "origin", "HEAD", cwd=work)
    done = cli("inv", config, "remote.sync", "fresh")
    assert done.returncode == 0, done.stderr
    assert "now at" in done.stdout and "catalog update" in done.stdout
    assert git("rev-parse", "HEAD", cwd=fresh) == git("rev-parse", "HEAD", cwd=work)


def test_sync_refuses_to_merge_a_diverged_checkout(ssh_lab: Lab, tmp_path: Path) -> None:
    upstream = tmp_path / "upstream.git"
    git("clone", "-q", "--bare", str(ROOT), str(upstream), cwd=tmp_path)
    diverged = tmp_path / "diverged"
    git("clone", "-q", str(upstream), str(diverged), cwd=tmp_path)
    git("commit", "-q", "--allow-empty", "-m", "local change", cwd=diverged)
    work = tmp_path / "work"
    git("clone", "-q", str(upstream), str(work), cwd=tmp_path)
    git("commit", "-q", "--allow-empty", "-m", "upstream change", cwd=work)
    git("push", "-q", "origin", "HEAD", cwd=work)
    port = ssh_lab.hosts["a"].port
    config = ssh_lab.write_config(
        tmp_path / "lab.yaml",
        extra_hosts={"old": {"host": "127.0.0.1", "port": port, "user": USER, "checkout": str(diverged)}},
    )
    done = cli("inv", config, "remote.sync", "old")
    assert done.returncode != 0
    assert "local change" in git("log", "-1", "--format=%s", cwd=diverged)


def test_server_start_status_stop_through_fab(ssh_lab: Lab, lab_yaml: Path) -> None:
    started = cli("fab", lab_yaml, "-H", "b", "server.start", timeout_s=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert cli("fab", lab_yaml, "-H", "b", "server.status").returncode == 0
        status = cli("inv", lab_yaml, "fleet.status", "--hosts", "b")
        assert "running (pid" in status.stdout and "│ ok " in status.stdout, status.stdout
        loaded = cli("fab", lab_yaml, "-H", "b", "server.load", "gemma3", timeout_s=300)
        assert loaded.returncode == 0 and "gemma3 loaded" in loaded.stdout, loaded.stdout + loaded.stderr
        shown = cli("fab", lab_yaml, "-H", "b", "server.ps", "--json")
        rows = {row["model"]: row for row in json.loads(shown.stdout)["rows"]}
        assert rows["gemma3"]["state"] == "loaded" and rows["smollm2 (default)"]["state"] == "loaded", rows
        unloaded = cli("fab", lab_yaml, "-H", "b", "server.unload", "gemma3")
        assert unloaded.returncode == 0 and "gemma3 unloaded" in unloaded.stdout, unloaded.stderr
        assert "gemma3" not in cli("fab", lab_yaml, "-H", "b", "server.ps").stdout
    finally:
        stopped = cli("fab", lab_yaml, "-H", "b", "server.stop", timeout_s=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def test_smoke_through_fab_runs_on_the_host_and_keeps_its_verdict(
    lab_yaml: Path, inference_server: RunningServer
) -> None:
    """Host b has no key for the server: /health passes, the four API checks get 401, exit 1."""
    url = inference_server.url
    done = cli("fab", lab_yaml, "-H", "b", "test.smoke", "--url", url, timeout_s=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"Smoke test of {url}" in done.stdout
    assert one_line(done.stderr).startswith("error: 4 of 5 smoke checks failed: GET /v1/models")
