"""Test: the project's suites (unit, integration, e2e), benchmarks, and `test.all` as CI runs it."""

from __future__ import annotations

import sys

from invoke import Context

from tasks._task import task


@task(name="all", help={"extra": "extra arguments passed to pytest, e.g. '-x -k models'"})
def all_(c: Context, extra: str = "") -> None:
    """Run every suite that needs no GPU, as CI does."""
    c.run(f"{sys.executable} -m pytest {extra}", pty=False)
