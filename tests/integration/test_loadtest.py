"""test.smoke, test.stress and test.memory against a real OpenAI-compatible server (llama_cpp.server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks.core import config, loadtest
from tasks.core.errors import HomelabError
from tests.fixtures.peer_server import PeerServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def _target(url: str) -> loadtest.Target:
    return loadtest.target(config.load(), url)


def _inv(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_smoke_passes_openai_checks_and_fails_missing_endpoints(peer_server: PeerServer) -> None:
    results = {r.name: r for r in loadtest.smoke(_target(peer_server.url))}
    assert list(results) == [name for name, _ in loadtest.SMOKE_CHECKS]
    failed = {name for name, r in results.items() if not r.passed}
    assert failed == {"GET /health", "POST /v1/messages"}, results
    assert "HTTP 404" in results["POST /v1/messages"].detail
    assert "chunks" in results["POST /v1/chat/completions (stream)"].detail


def test_smoke_task_prints_every_check_and_exits_nonzero_on_a_failure(peer_server: PeerServer) -> None:
    done = _inv("test.smoke", "--url", peer_server.url)
    assert done.returncode == 1
    assert "/v1/chat/completions" in done.stdout and "/v1/messages" in done.stdout
    assert done.stderr.strip().startswith(
        "error: 2 of 5 smoke checks failed: GET /health, POST /v1/messages — see the detail column"
    )


def test_smoke_reports_lost_connection_per_check() -> None:
    results = loadtest.smoke(_target(f"http://127.0.0.1:{free_port()}"))
    assert not any(r.passed for r in results)
    assert all("ConnectError" in r.detail for r in results)


def test_stress_task_reports_no_losses_and_latency_percentiles(peer_server: PeerServer) -> None:
    done = _inv("test.stress", "--url", peer_server.url, "--requests", "6", "--concurrency", "3")
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


def test_memory_finds_the_listening_server_and_judges_the_budget(peer_server: PeerServer) -> None:
    target = _target(peer_server.url)
    assert loadtest.listening_pid(peer_server.url) == peer_server.pid
    generous = loadtest.memory(target, peer_server.pid, budget_mb=100_000, requests=2, concurrency=1)
    assert generous.within_budget and generous.load.ok == 2
    assert generous.peak_mb >= generous.idle_mb > 50  # the 98 MB model is mapped in
    tight = loadtest.memory(target, peer_server.pid, budget_mb=1, requests=1, concurrency=1)
    assert not tight.within_budget
