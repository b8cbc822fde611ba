"""test.smoke, test.stress and test.memory against our inference server on the bundled model."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core import config, loadtest
from tasks.core.errors import HomelabError
from tests.fixtures.server import RunningServer
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def _target(url: str, api_key: str = "") -> loadtest.Target:
    return dataclasses.replace(loadtest.target(config.load(), url), api_key=api_key)


def _inv(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args, "--url", server.url]
    env = {**os.environ, "INVOKE_SERVER_API_KEY": server.api_key}
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_smoke_passes_every_check_against_the_server(inference_server: RunningServer) -> None:
    results = {r.name: r for r in loadtest.smoke(_target(inference_server.url, inference_server.api_key))}
    assert list(results) == [name for name, _ in loadtest.SMOKE_CHECKS]
    assert all(r.passed for r in results.values()), results
    assert "chunks" in results["POST /v1/chat/completions (stream)"].detail


def test_smoke_without_the_key_fails_the_api_checks_but_not_health(inference_server: RunningServer) -> None:
    results = {r.name: r for r in loadtest.smoke(_target(inference_server.url))}
    failed = {name for name, r in results.items() if not r.passed}
    assert failed == {name for name, _ in loadtest.SMOKE_CHECKS} - {"GET /health"}, results
    assert "HTTP 401" in results["POST /v1/messages"].detail


def test_smoke_task_prints_every_check_and_exits_zero(inference_server: RunningServer) -> None:
    done = _inv(inference_server, "test.smoke")
    assert done.returncode == 0, done.stderr
    assert "/v1/chat/completions" in done.stdout and "/v1/messages" in done.stdout


def test_smoke_reports_lost_connection_per_check() -> None:
    results = loadtest.smoke(_target(f"http://127.0.0.1:{free_port()}"))
    assert not any(r.passed for r in results)
    assert all("ConnectError" in r.detail for r in results)


def test_stress_task_reports_no_losses_and_latency_percentiles(inference_server: RunningServer) -> None:
    done = _inv(inference_server, "test.stress", "--requests", "6", "--concurrency", "2")
    assert done.returncode == 0, done.stderr
    for column in ("lost", "failed", "p50 ms", "p95 ms", "p99 ms"):
        assert column in done.stdout


def test_stress_counts_every_request_when_the_server_is_gone() -> None:
    report = loadtest.load(_target(f"http://127.0.0.1:{free_port()}"), requests=5, concurrency=2)
    assert (report.ok, report.lost, report.failed) == (0, 5, 0)
    assert report.row()[5:8] == ("-", "-", "-")  # no latency to show, rather than nan
    with pytest.raises(
        HomelabError, match=r"5 lost and 0 failed of 5: ConnectError x5 — .*inv server\.status"
    ):
        report.raise_on_losses()


def test_memory_finds_the_listening_server_and_judges_the_budget(inference_server: RunningServer) -> None:
    target = _target(inference_server.url, inference_server.api_key)
    assert loadtest.listening_pid(inference_server.url) == inference_server.pid
    generous = loadtest.memory(target, inference_server.pid, budget_mb=100_000, requests=2, concurrency=1)
    assert generous.within_budget and generous.load.ok == 2
    assert generous.peak_mb >= generous.idle_mb > 50  # the 98 MB model is mapped in
    tight = loadtest.memory(target, inference_server.pid, budget_mb=1, requests=1, concurrency=1)
    assert not tight.within_budget


def test_memory_refuses_a_negative_budget_before_any_request() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "test.memory", "--budget-mb", "-1", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == "error: --budget-mb -1 is negative — give a budget in MB, e.g. --budget-mb 2048"
    )
