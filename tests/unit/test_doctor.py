"""doctor's cache, TTLs, invalidation, lock, log rotation and fixes, on real files in tmp dirs."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tasks.core import config, config_file, console, doctor
from tasks.core.errors import HomelabError
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TTL = {phase: 3600.0 for phase in doctor.PHASES}


class CountingCheck:
    """A real check whose runs leave a line in a file, so a test can tell reruns from cache hits."""

    def __init__(self, tally: Path, status: doctor.Status = "ok") -> None:
        self.tally, self.status = tally, status

    def __call__(self) -> doctor.Outcome:
        with self.tally.open("a") as out:
            out.write("run\n")
        return doctor.Outcome(self.status, "counted")

    @property
    def runs(self) -> int:
        return len(self.tally.read_text().splitlines()) if self.tally.exists() else 0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A project root with its own copy of pyproject.toml, free to edit."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    return project


def _settings(project_config: dict[str, Any], tmp_path: Path) -> config.Settings:
    project_config["models"]["cache_dir"] = str(tmp_path / "hub")
    project_config["server"]["state_dir"] = str(tmp_path / "server-state")
    project_config["server"]["port"] = free_port()
    project_config["doctor"]["state_dir"] = str(tmp_path / "doctor-state")
    return config.validate(project_config)


def _run(checks: list[doctor.Check], root: Path, state: Path, **kwargs: Any) -> doctor.Report:
    settings = config.load()
    fingerprint = doctor.Inputs(root, settings).fingerprint
    limits = {"lock_timeout_s": 0, "keep_logs": settings.doctor.keep_logs}
    return doctor.run_checks(checks, fingerprint, state, kwargs.pop("ttl", TTL), **{**limits, **kwargs})


def test_fast_rerun_reuses_passing_results(tmp_path: Path, root: Path) -> None:
    counting = CountingCheck(tmp_path / "tally")
    checks = [doctor.Check("counting", "environment", ("pyproject",), counting)]
    _run(checks, root, tmp_path / "state", fast=False)
    report = _run(checks, root, tmp_path / "state", fast=True)
    assert counting.runs == 1
    assert report.results[0].cached and report.results[0].status == "ok"
    _run(checks, root, tmp_path / "state", fast=False)
    assert counting.runs == 2


def test_expired_ttl_reruns_the_check(tmp_path: Path, root: Path) -> None:
    counting = CountingCheck(tmp_path / "tally")
    checks = [doctor.Check("counting", "server", (), counting)]
    _run(checks, root, tmp_path / "state", fast=True, ttl={**TTL, "server": 0})
    _run(checks, root, tmp_path / "state", fast=True, ttl={**TTL, "server": 0})
    assert counting.runs == 2


def test_changed_input_file_invalidates_only_checks_that_depend_on_it(tmp_path: Path, root: Path) -> None:
    on_pyproject = CountingCheck(tmp_path / "pyproject-tally")
    on_nothing = CountingCheck(tmp_path / "other-tally")
    checks = [
        doctor.Check("reads pyproject", "environment", ("pyproject",), on_pyproject),
        doctor.Check("reads nothing", "environment", (), on_nothing),
    ]
    _run(checks, root, tmp_path / "state", fast=True)
    with (root / "pyproject.toml").open("a") as out:
        out.write("\n# changed\n")
    report = _run(checks, root, tmp_path / "state", fast=True)
    assert (on_pyproject.runs, on_nothing.runs) == (2, 1)
    assert [r.cached for r in report.results] == [False, True]


def test_failures_are_never_served_from_cache(tmp_path: Path, root: Path) -> None:
    failing = CountingCheck(tmp_path / "tally", status="fail")
    checks = [doctor.Check("failing", "environment", (), failing)]
    _run(checks, root, tmp_path / "state", fast=True)
    report = _run(checks, root, tmp_path / "state", fast=True)
    assert failing.runs == 2 and not report.ok


def test_a_check_that_raises_is_a_failed_check(tmp_path: Path, root: Path) -> None:
    def broken() -> doctor.Outcome:
        raise HomelabError("catalog.yaml: entry 'x': repo: missing field", "fix that entry")

    report = _run([doctor.Check("broken", "configuration", (), broken)], root, tmp_path / "state", fast=False)
    assert report.results[0].status == "fail"
    assert report.results[0].detail == "catalog.yaml: entry 'x': repo: missing field — fix that entry"


@pytest.mark.parametrize("state", ["{not json", '{"version": 1, "checks": {"counting": {"status": "ok"}}}'])
def test_unreadable_cache_entries_are_rerun(tmp_path: Path, root: Path, state: str) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(state)
    counting = CountingCheck(tmp_path / "tally")
    report = _run(
        [doctor.Check("counting", "environment", (), counting)], root, tmp_path / "state", fast=True
    )
    assert counting.runs == 1 and report.ok


def _hold_lock(lock: Path) -> subprocess.Popen[str]:
    """A process holding `lock` until the test closes its stdin."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from tasks.core.doctor import run_lock\n"
        "with run_lock(Path(sys.argv[1]), 0):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_second_run_waits_for_the_lock_then_gives_up_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "doctor.lock"
    holder = _hold_lock(lock)
    assert holder.stdin is not None
    try:
        with (
            pytest.raises(
                HomelabError, match=rf"another doctor run \(pid {holder.pid}\) holds .*gave up after 0.2s"
            ),
            doctor.run_lock(lock, timeout_s=0.2),
        ):
            pass
        acquired = threading.Event()
        held_by: list[str] = []

        def wait_for_the_lock() -> None:
            with doctor.run_lock(lock, timeout_s=120):
                held_by.append(lock.read_text().strip())
                acquired.set()

        waiter = threading.Thread(target=wait_for_the_lock)
        waiter.start()
        assert not acquired.wait(0.5), "the waiter took a lock that another process holds"
        holder.stdin.close()  # only now does the holder let go
        holder.wait(timeout=30)
        waiter.join(timeout=120)
        assert acquired.is_set() and held_by == [str(os.getpid())]
        assert not lock.exists()
    finally:
        if not holder.stdin.closed:
            holder.stdin.close()
        holder.wait(timeout=30)


def test_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "doctor.lock"
    holder = _hold_lock(lock)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    assert lock.read_text().strip() == str(holder.pid)
    with doctor.run_lock(lock, timeout_s=0) as notes:
        assert notes == [f"took over the lock left by pid {holder.pid}, which is no longer running"]


def _race_for(lock: Path, start: Any, both_saw_it_stale: Any, release: Any, results: Any) -> None:
    """One of two doctor runs that reach a stale lock at once: report whether it got the lock."""
    from tasks.core import processes

    def alive_once_both_have_looked(pid: int) -> bool:  # the window between "stale?" and taking over
        both_saw_it_stale.wait(timeout=30)
        return processes.alive(pid)

    doctor.alive = alive_once_both_have_looked  # type: ignore[attr-defined]
    try:
        start.wait(timeout=30)
        with doctor.run_lock(lock, timeout_s=0):
            results.put("held")
            release.wait(timeout=60)
    except HomelabError:
        results.put("refused")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_two_runs_racing_for_a_stale_lock_never_both_take_it(tmp_path: Path) -> None:
    import multiprocessing

    lock = tmp_path / "doctor.lock"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    lock.write_bytes(gone.stdout)  # left by a run that died holding it
    forked = multiprocessing.get_context("fork")
    start, both_saw_it_stale, release = forked.Barrier(2), forked.Barrier(2), forked.Event()
    results = forked.Queue()
    racers = [
        forked.Process(target=_race_for, args=(lock, start, both_saw_it_stale, release, results))
        for _ in range(2)
    ]
    for racer in racers:
        racer.start()
    try:
        outcomes = sorted(results.get(timeout=60) for _ in racers)
    finally:
        release.set()
        for racer in racers:
            racer.join(timeout=60)
    assert outcomes == ["held", "refused"]
    assert not lock.exists()


def test_logs_rotate_keeping_the_newest(tmp_path: Path) -> None:
    written = [doctor.write_log(tmp_path, [f"run {i}"], keep=20) for i in range(25)]
    kept = sorted(tmp_path.glob("doctor-*.log"))
    assert kept == written[-20:]
    assert kept[-1].read_text() == "run 24\n"


def _check(settings: config.Settings, name: str, root: Path = ROOT) -> list[doctor.Check]:
    return [c for c in doctor.host_checks(root, settings, {}, hosts=False) if c.name == name]


def test_dry_run_says_what_fix_would_create_and_fix_creates_it(project_config: dict, tmp_path: Path) -> None:
    settings = _settings(project_config, tmp_path)
    checks = _check(settings, "directories")
    planned = _run(checks, ROOT, tmp_path / "state", fast=False, dry_run=True).results[0]
    assert planned.status == "warn"
    assert planned.actions == [
        f"would create {settings.models.cache_dir}",
        f"would create {settings.server.state_dir}",
    ]
    assert not settings.models.cache_dir.exists()
    # --fast too: the cached warning is rechecked, since fixes are not cached
    fixed = _run(checks, ROOT, tmp_path / "state", fast=True, fix=True).results[0]
    assert fixed.status == "ok" and fixed.actions[0] == f"did create {settings.models.cache_dir}"
    assert settings.models.cache_dir.is_dir() and settings.server.state_dir.is_dir()


def test_unfinished_download_is_reported_by_repo(project_config: dict, tmp_path: Path) -> None:
    settings = _settings(project_config, tmp_path)
    repo = settings.models.cache_dir / "models--org--tiny"
    for folder in ("blobs", "refs", "snapshots"):
        (repo / folder).mkdir(parents=True)
    (repo / "blobs" / "0123abcd.incomplete").write_bytes(b"partial")
    result = _run(_check(settings, "downloads"), ROOT, tmp_path / "state", fast=False).results[0]
    assert result.status == "warn"
    assert "unfinished downloads: models--org--tiny (1)" in result.detail


def test_stale_server_pidfile_is_found_and_fix_removes_it(project_config: dict, tmp_path: Path) -> None:
    settings = _settings(project_config, tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pidfile = settings.server.state_dir / "server.pid"
    pidfile.parent.mkdir(parents=True)
    pidfile.write_text(dead.stdout)
    result = _run(_check(settings, "server"), ROOT, tmp_path / "state", fast=False, fix=True).results[0]
    assert result.actions == [f"did remove the stale pidfile {pidfile}"]
    assert not pidfile.exists() and result.status == "skip"


def test_missing_requirement_is_named_and_dry_run_shows_the_pip_install(
    project_config: dict, tmp_path: Path, root: Path
) -> None:
    text = (root / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(
        text.replace('"pyyaml>=6",', '"pyyaml>=6",\n    "no-such-package-xyz>=1",')
    )
    settings = _settings(project_config, tmp_path)
    result = _run(
        _check(settings, "extras", root), root, tmp_path / "state", fast=False, dry_run=True
    ).results[0]
    assert result.status == "fail"
    assert result.detail == "missing or wrong version: no-such-package-xyz>=1"
    assert result.actions == ["would run: pip install no-such-package-xyz>=1"]


def test_option_shaped_inventory_host_runs_nothing_even_past_validation(
    project_config: dict[str, Any], tmp_path: Path
) -> None:
    """doctor --hosts used to run OpenSSH with the inventory's host as an argument: a ProxyCommand."""
    from invoke import Config

    pwned = tmp_path / "pwned"
    hostile = f"-oProxyCommand=touch {pwned}"
    ssh_config = tmp_path / "ssh_config"  # keeps ~/.ssh/config out, and any lookup off the network
    ssh_config.write_text(f"Host -oProxyCommand=*\n  HostName 127.0.0.1\n  Port {free_port()}\n")
    settings = _settings(project_config, tmp_path)
    unchecked = {"host": hostile, "user": "", "port": 0, "checkout": "", "python": "", "tags": []}
    settings.hosts["evil"] = config.HostSettings.model_construct(**unchecked)  # as if validation missed it
    merged = Config(overrides={**project_config, "ssh_config_path": str(ssh_config)})
    (check,) = [c for c in doctor.host_checks(ROOT, settings, merged, hosts=True) if c.name == "ssh evil"]
    (result,) = _run([check], ROOT, tmp_path / "state", fast=False).results
    assert not pwned.exists()
    assert result.status == "fail" and "cannot connect over SSH" in result.detail


def test_replay_key_reads_every_section_that_validation_reads() -> None:
    """A section the key missed could change the settings while `doctor --fast` replays the old ones."""
    assert tuple(config.Settings.model_fields) == config_file.SECTIONS


def test_doctor_table_through_a_pipe_is_drawn_as_rich_draws_it(capsys: pytest.CaptureFixture[str]) -> None:
    """`doctor --fast` prints its table without importing rich: the same bytes rich would print."""
    from rich.console import Console
    from rich.table import Table

    columns = ["phase", "check", "status", "took", "detail"]
    rows = [
        ("environment", "python", "ok", "cached", "Python 3.11 (/venv/bin/python)"),
        ("server", "server", "warn", "0.03s", "stale pidfile — pid 7\nwould remove the stale pidfile"),
        ("disk", "free space", "ok", "0.00s", ""),
    ]
    console.print_table("Doctor", columns, rows)
    table = Table(title="Doctor", title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold" if column in console.IDENTIFYING else "ellipsis")
    for row in rows:
        table.add_row(*row)
    drawn = Console(highlight=False, width=100_000, file=io.StringIO())
    drawn.print(table)
    assert capsys.readouterr().out == drawn.file.getvalue()
    assert console.styled("ok", "green") == "ok"  # what rich prints for [green]ok[/] through a pipe
