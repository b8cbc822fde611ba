"""Lint: ruff and mypy over the project, as CI runs them (configured in pyproject.toml)."""

from __future__ import annotations

from invoke import Context

from tasks._task import JSON_HELP, task


@task(help={"json": JSON_HELP})
def check(c: Context, json: bool = False) -> None:
    """Run ruff's linter over the project."""
    from tasks.core import suites

    suites.report("lint.check", [suites.lint("check")])


@task(
    name="format",
    help={"check": "only report files that would change (what CI runs); exit 1 if any", "json": JSON_HELP},
)
def format_(c: Context, check: bool = False, json: bool = False) -> None:
    """Format the project with ruff (--check: report only)."""
    from tasks.core import suites

    suites.report("lint.format", [suites.lint("format") if check else suites.format_code()])


@task(help={"json": JSON_HELP})
def types(c: Context, json: bool = False) -> None:
    """Type-check tasks and inference_server with mypy."""
    from tasks.core import suites

    suites.report("lint.types", [suites.lint("types")])


@task(name="all", help={"json": JSON_HELP})
def all_(c: Context, json: bool = False) -> None:
    """Run every check CI runs: ruff check, ruff format --check, mypy."""
    from tasks.core import suites

    suites.report("lint.all", [suites.lint(step) for step in suites.LINT_STEPS])


@task(help={"json": JSON_HELP})
def fix(c: Context, json: bool = False) -> None:
    """Apply ruff's safe fixes, then format: what the house rules ask before each commit."""
    from tasks.core import suites

    suites.report("lint.fix", suites.fix())
