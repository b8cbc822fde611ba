"""test.all's bookkeeping: counts from pytest's own report, and an empty suite is not a pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core import suites
from tasks.core.errors import HomelabError

MIXED = """
import pytest

def test_one(): assert True
def test_two(): assert True
def test_three(): assert False
@pytest.mark.skip(reason="shown as skipped")
def test_four(): pass
"""


def test_counts_come_from_the_junit_report(tmp_path: Path) -> None:
    (tmp_path / "test_mixed.py").write_text(MIXED)
    result = suites.pytest_suite("mixed", "", root=tmp_path)
    assert (result.passed, result.failed, result.skipped) == (2, 1, 1)
    assert result.exit_code == 1 and not result.ok


def test_suite_that_collects_nothing_fails(tmp_path: Path) -> None:
    result = suites.pytest_suite("empty", "unit", root=tmp_path)
    assert result.exit_code == suites.PYTEST_NO_TESTS and not result.ok
    assert result.note == "no tests collected"
    with pytest.raises(HomelabError, match=r"1 of 1 failed: test\.empty"):
        suites.report("test.all", [result])


def test_benchmarks_are_found_by_name(tmp_path: Path) -> None:
    for name in ("bench_engine.py", "bench_doctor.py", "helper.py"):
        (tmp_path / name).write_text("def main(): pass\n")
    assert [p.name for p in suites.benchmarks(folder=tmp_path)] == ["bench_doctor.py", "bench_engine.py"]
    assert [p.name for p in suites.benchmarks("engine", folder=tmp_path)] == ["bench_engine.py"]
