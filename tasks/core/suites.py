"""Run the project's quality gates — ruff, mypy, pytest suites, benchmarks — and count their results.

Every tool runs as `sys.executable -m TOOL` from the project root, so a fresh machine needs no PATH
set up beyond the virtualenv's interpreter.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from tasks.core.config import PROJECT_ROOT
from tasks.core.console import child_stdout, say

PYTEST_NO_TESTS = 5
BENCH_DIR = PROJECT_ROOT / "tests" / "bench"

LINT_STEPS: dict[str, list[str]] = {
    "check": ["ruff", "check", "."],
    "format": ["ruff", "format", "--check", "."],
    "types": ["mypy", "tasks", "inference_server"],
}
FORMAT = ["ruff", "format", "."]
FIX_STEPS: list[list[str]] = [["ruff", "check", "--fix", "."], FORMAT]


@dataclass(frozen=True)
class StepResult:
    """One gate's outcome; counts are filled for pytest suites only."""

    name: str
    exit_code: int
    seconds: float
    passed: int | None = None
    failed: int | None = None
    skipped: int | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _run(name: str, argv: list[str], root: Path) -> StepResult:
    say(f"==> {name}: {shlex.join(['python', '-m', *argv])}", markup=False)
    started = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", *argv], cwd=root, stdout=child_stdout()).returncode
    return StepResult(name, code, time.perf_counter() - started)


def lint(step: str, root: Path = PROJECT_ROOT) -> StepResult:
    return _run(f"lint.{step}", LINT_STEPS[step], root)


def format_code(root: Path = PROJECT_ROOT) -> StepResult:
    return _run("lint.format", FORMAT, root)


def fix(root: Path = PROJECT_ROOT) -> list[StepResult]:
    return [_run(f"lint.fix ({argv[1]})", argv, root) for argv in FIX_STEPS]


def pytest_suite(name: str, marker: str, extra: str = "", root: Path = PROJECT_ROOT) -> StepResult:
    """One pytest run selected by marker, with counts read from its JUnit XML report.

    pytest's exit code 5 ("no tests collected") counts as a failure: a suite that runs nothing
    proves nothing, and a typo in a marker or a path must not turn CI green.
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        argv = ["pytest", *(["-m", marker] if marker else []), f"--junitxml={report}", *shlex.split(extra)]
        result = _run(f"test.{name}", argv, root)
        counts = _junit_counts(report)
    note = "no tests collected" if result.exit_code == PYTEST_NO_TESTS else ""
    return StepResult(
        name=result.name, exit_code=result.exit_code, seconds=result.seconds, note=note, **counts
    )


def _junit_counts(report: Path) -> dict[str, int]:
    top = ET.parse(report).getroot() if report.is_file() else None
    suite = top if top is None or top.tag == "testsuite" else top.find("testsuite")
    if suite is None:
        return {"passed": 0, "failed": 0, "skipped": 0}  # pytest died before writing its report
    total, failed, errors, skipped = (
        int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")
    )
    return {"passed": total - failed - errors - skipped, "failed": failed + errors, "skipped": skipped}


def benchmarks(only: str = "", folder: Path = BENCH_DIR) -> list[Path]:
    """The benchmark scripts, `tests/bench/bench_NAME.py`, optionally just NAME."""
    scripts = sorted(folder.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") == only]
    return scripts


def bench(script: Path, root: Path = PROJECT_ROOT) -> StepResult:
    """Run one benchmark script's `main()` in its own interpreter (it prints its table, writes JSON)."""
    from tasks.core.console import child_stdout, say

    name = script.stem.removeprefix("bench_")
    code = f"import runpy; runpy.run_path({str(script)!r})['main']()"
    say(f"==> bench {name}", markup=False)
    started = time.perf_counter()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    exit_code = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, stdout=child_stdout()
    ).returncode
    output = root / ".bench" / f"{name}.json"
    return StepResult(name, exit_code, time.perf_counter() - started, note=str(output.relative_to(root)))


def report(title: str, results: list[StepResult]) -> None:
    """One table of every gate's outcome; any failure is an error naming the failed gates."""
    from tasks.core.console import print_table, say
    from tasks.core.errors import HomelabError

    rows = [
        (
            r.name,
            "ok" if r.ok else "FAILED",
            r.passed,
            r.failed,
            r.skipped,
            f"{r.seconds:.1f}",
            r.note if r.ok else ": ".join(filter(None, [f"exit {r.exit_code}", r.note])),
        )
        for r in results
    ]
    print_table(title, ["step", "result", "pass", "fail", "skip", "secs", "note"], rows)
    counted = [r for r in results if r.passed is not None]
    if len(counted) > 1:
        totals = (sum(getattr(r, k) or 0 for r in counted) for k in ("passed", "failed", "skipped"))
        say("tests: {} passed, {} failed, {} skipped".format(*totals))
    failed = [r for r in results if not r.ok]
    if failed:
        names = ", ".join(r.name for r in failed)
        exit_code = failed[0].exit_code if len(failed) == 1 else 1  # a lone failure keeps its tool's code
        raise HomelabError(
            f"{len(failed)} of {len(results)} failed: {names}", "see the output above", exit_code
        )


def write_bench_json(name: str, data: dict[str, object], root: Path = PROJECT_ROOT) -> Path:
    """Save a benchmark's figures as .bench/NAME.json (whole or not at all), for `inv test.bench`."""
    import json

    from tasks.core.files import write_atomically

    target = root / ".bench" / f"{name}.json"
    write_atomically(target, json.dumps(data, indent=1) + "\n")
    return target
