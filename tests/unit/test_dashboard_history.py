"""The dashboard's memory: load samples read from the app's real metrics, and a bounded request log."""

from __future__ import annotations

import pytest

from inference_server.metrics import Metrics
from inference_server.ui.recent import History, RequestLog, RequestRecord

pytestmark = pytest.mark.unit


def test_a_sample_is_the_interval_since_the_last_one() -> None:
    metrics = Metrics()
    history = History(metrics.registry, size=3)
    history.sample()
    idle = history.samples[-1]
    assert (idle.tokens_per_s, idle.ttft_s) == (0.0, None)  # nothing started: no TTFT, not a zero one
    metrics.completion_tokens.inc(40)
    metrics.ttft.observe(0.2)
    metrics.ttft.observe(0.4)
    history.sample()
    busy = history.samples[-1]
    assert busy.tokens_per_s > 0 and busy.ttft_s == pytest.approx(0.3)
    history.sample()
    history.sample()
    assert len(history.listed()) == 3 and history.listed()[-1]["tokens_per_s"] == 0.0  # bounded


def test_the_request_log_keeps_the_newest_first_and_no_more_than_its_size() -> None:
    log = RequestLog(size=2)
    for i in range(3):
        log.add(RequestRecord(float(i), f"m{i}", 1, 2, 0.5, "stop", ""))
    assert [r["model"] for r in log.listed()] == ["m2", "m1"]
