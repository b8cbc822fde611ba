"""`inv doctor` end to end: every phase in order, a --fast rerun from cache, --hosts over real ssh, and
`fab -H host doctor` running on the host with the host's own cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.fixtures.sshd import Lab, cli
from tests.imports import loaded_by_inv
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


SERVER_PORT = free_port()  # one port for every run: a changed setting would invalidate the cache


def doctor_env(tmp_path: Path) -> dict[str, str]:
    """Overrides that keep a run's state in tmp_path and its server probe on a free port."""
    return {
        "INVOKE_DOCTOR_STATE_DIR": str(tmp_path / "doctor"),
        "INVOKE_SERVER_STATE_DIR": str(tmp_path / "server"),
        "INVOKE_SERVER_PORT": str(SERVER_PORT),
    }


def doctor(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, **(env or doctor_env(tmp_path))}
    command = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *flags]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    return done.returncode, json.loads(done.stdout)


def test_rerun_with_fast_serves_everything_but_the_server_from_cache(tmp_path: Path) -> None:
    _, full = doctor(tmp_path, "doctor", "--json")
    phases = [c["phase"] for c in full["checks"]]
    assert phases == sorted(phases, key=["environment", "configuration", "models", "server", "disk"].index)
    assert {c["name"]: c["status"] for c in full["checks"]}["server"] == "skip"
    assert not any(c["cached"] for c in full["checks"])

    _, fast = doctor(tmp_path, "doctor", "--fast", "--json")
    reran = [c["name"] for c in fast["checks"] if not c["cached"]]
    assert reran == ["server"] + [c["name"] for c in full["checks"] if c["status"] == "fail"]
    assert len(list((tmp_path / "doctor" / "logs").glob("doctor-*.log"))) == 2
    assert not (tmp_path / "doctor" / "doctor.lock").exists()


def test_fast_rerun_from_cache_imports_no_library_a_check_needs(tmp_path: Path) -> None:
    """A cache hit costs the CLI's start and little more: nothing a check would need is imported, and
    the configuration is not validated (pydantic) since the raw inputs match the last run's."""
    doctor(tmp_path, "doctor", "--json")
    heavy = {"huggingface_hub", "httpx", "httpx2", "fabric", "paramiko", "packaging", "rich"}
    heavy |= {"llama_cpp", "mlx", "mlx_lm", "numpy", "tokenizers", "pydantic", "pydantic_core"}
    assert loaded_by_inv("doctor", "--fast", "--json", env=doctor_env(tmp_path)) & heavy == set()
    assert loaded_by_inv("doctor", "--fast", env=doctor_env(tmp_path)) & heavy == set()  # the table, piped


def test_fast_rerun_after_a_config_change_validates_and_reruns_what_depends_on_it(tmp_path: Path) -> None:
    doctor(tmp_path, "doctor", "--json")
    changed = {**doctor_env(tmp_path), "INVOKE_DOCTOR_MIN_FREE_DISK_MB": "1"}
    _, fast = doctor(tmp_path, "doctor", "--fast", "--json", env=changed)
    cached = {c["name"]: c["cached"] for c in fast["checks"]}
    assert cached["virtualenv"] and not cached["free space"] and not cached["invoke.yaml"]
    assert loaded_by_inv("doctor", "--fast", "--json", env=changed) & {"pydantic", "rich"} == set()


def test_unreachable_inventory_host_fails_only_with_hosts(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(f"hosts:\n  ghost:\n    host: 127.0.0.1\n    port: {free_port()}\n")
    _, without = doctor(tmp_path, "-f", str(inventory), "doctor", "--json")
    assert not any(c["phase"] == "hosts" for c in without["checks"])
    code, with_hosts = doctor(tmp_path, "-f", str(inventory), "doctor", "--fast", "--json", "--hosts")
    ghost = next(c for c in with_hosts["checks"] if c["name"] == "ssh ghost")
    assert code == 1 and ghost["status"] == "fail" and not with_hosts["ok"]
    assert "127.0.0.1" in ghost["detail"]


def test_fab_runs_doctor_on_the_host_and_reruns_from_the_hosts_cache(ssh_lab: Lab, tmp_path: Path) -> None:
    lab_yaml = ssh_lab.write_config(tmp_path / "lab.yaml")
    host_state = ssh_lab.hosts["c"].folder / "doctor"  # the host's INVOKE_DOCTOR_STATE_DIR (sshd SetEnv)
    first = cli("fab", lab_yaml, "-H", "c", "doctor", "--json", timeout_s=300)
    full = json.loads(first.stdout)
    assert first.returncode == (0 if full["ok"] else 1), first.stderr
    assert Path(full["log_file"]).parent == host_state / "logs"
    assert not any(c["cached"] for c in full["checks"])

    second = cli("fab", lab_yaml, "-H", "c", "doctor.check", "--fast", "--json", timeout_s=300)
    fast = json.loads(second.stdout)
    assert second.returncode == (0 if fast["ok"] else 1), second.stderr
    assert [c["name"] for c in fast["checks"] if c["cached"]] == [
        c["name"] for c in full["checks"] if c["name"] != "server" and c["status"] != "fail"
    ]


def test_state_dir_the_system_refuses_is_one_line_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    env = {**os.environ, "INVOKE_DOCTOR_STATE_DIR": str(tmp_path / "file" / "doctor")}
    command = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "doctor", "--fast"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'file' / 'doctor'}: Not a directory — "
        "check that path and the invoke.yaml setting that names it"
    ]
