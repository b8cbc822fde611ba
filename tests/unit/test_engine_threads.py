"""The llama.cpp engine's default thread count, on Linux (CPU affinity) and macOS (no affinity call)."""

from __future__ import annotations

import os

import pytest

from inference_server.engines.llama_cpp_engine import usable_cpus


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="this platform has no CPU affinity")
def test_threads_default_to_the_cpus_this_process_may_use() -> None:
    assert usable_cpus() == len(os.sched_getaffinity(0))


def test_without_sched_getaffinity_as_on_macos_threads_default_to_every_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable", which os.cpu_count may say
    assert usable_cpus() == 1
