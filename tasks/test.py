"""Test: the suites (unit, integration, e2e), checks against a running server, benchmarks, and CI."""

from __future__ import annotations

from invoke import Context

from tasks._task import JSON_HELP, task

EXTRA_HELP = "extra arguments passed to pytest, e.g. '-x -k models'"
URL_HELP = "server base URL (default: invoke.yaml's server.host and server.port on this machine)"


def _suite(name: str, extra: str) -> None:
    from tasks.core import suites

    suites.report(f"test.{name}", [suites.pytest_suite(name, name, extra)])


@task(help={"extra": EXTRA_HELP, "json": JSON_HELP})
def unit(c: Context, extra: str = "", json: bool = False) -> None:
    """Run the unit tests (seconds, no servers)."""
    _suite("unit", extra)


@task(help={"extra": EXTRA_HELP, "json": JSON_HELP})
def integration(c: Context, extra: str = "", json: bool = False) -> None:
    """Run the integration tests (real hub mirror, sshd, git, peer server)."""
    _suite("integration", extra)


@task(help={"extra": EXTRA_HELP, "json": JSON_HELP})
def e2e(c: Context, extra: str = "", json: bool = False) -> None:
    """Run the end-to-end tests (the server on the bundled model, real SDK clients)."""
    _suite("e2e", extra)


@task(
    help={
        "url": URL_HELP,
        "model": "model name to ask for (default: the first the server lists)",
        "json": JSON_HELP,
    }
)
def smoke(c: Context, url: str = "", model: str = "", json: bool = False) -> None:
    """Send a few real requests to a running server: health, models, chat, stream, messages."""
    from tasks.core import config, loadtest
    from tasks.core.console import print_table
    from tasks.core.errors import HomelabError

    settings = config.load(c.config)
    target = loadtest.target(settings, url, model)
    results = loadtest.smoke(target)
    rows = [(r.name, "ok" if r.passed else "FAILED", f"{r.seconds:.2f}", r.detail) for r in results]
    print_table(f"Smoke test of {target.url}", ["check", "result", "seconds", "detail"], rows)
    failed = [r.name for r in results if not r.passed]
    if failed:
        raise HomelabError(
            f"{len(failed)} of {len(results)} smoke checks failed: {', '.join(failed)}",
            "see the detail column (no answer at all: is the server up? inv server.status)",
        )


@task(help={"only": "run just this benchmark (NAME from tests/bench/bench_NAME.py)", "json": JSON_HELP})
def bench(c: Context, only: str = "", json: bool = False) -> None:
    """Run the benchmarks: each prints its table and writes .bench/NAME.json."""
    from tasks.core import suites
    from tasks.core.errors import HomelabError

    scripts = suites.benchmarks(only)
    if not scripts:
        names = ", ".join(s.stem.removeprefix("bench_") for s in suites.benchmarks()) or "none yet"
        raise HomelabError(f"no benchmark named '{only}'" if only else "no benchmarks", f"available: {names}")
    suites.report("Benchmarks", [suites.bench(script) for script in scripts])


@task(
    help={
        "url": URL_HELP,
        "requests": "requests to send (default: test.stress_requests)",
        "concurrency": "requests in flight at once (default: test.stress_concurrency)",
        "allow_remote": "allow a URL that is not this machine's loopback",
        "json": JSON_HELP,
    }
)
def stress(
    c: Context,
    url: str = "",
    requests: int = 0,
    concurrency: int = 0,
    allow_remote: bool = False,
    json: bool = False,
) -> None:
    """Send N chat requests at concurrency C; report lost, failed and latency percentiles."""
    from tasks.core import config, loadtest
    from tasks.core.console import print_table

    settings = config.load(c.config)
    target = loadtest.target(settings, url)
    requests = requests or settings.test.stress_requests
    concurrency = concurrency or settings.test.stress_concurrency
    loadtest.check_load_bounds(target, requests, concurrency, settings.test.stress_max_requests, allow_remote)
    report = loadtest.load(target, requests, concurrency)
    print_table(f"Stress test of {target.url}", loadtest.LOAD_COLUMNS, [report.row()])
    report.raise_on_losses()


@task(
    help={
        "url": URL_HELP,
        "pid": "server process id (default: the process listening on the URL's port)",
        "budget_mb": "fail above this peak RSS in MB (default: test.memory_budget_mb)",
        "requests": "requests sent while measuring (default: test.memory_requests)",
        "json": JSON_HELP,
    }
)
def memory(
    c: Context, url: str = "", pid: int = 0, budget_mb: int = 0, requests: int = 0, json: bool = False
) -> None:
    """Measure the server's peak RSS while it serves a bounded load, against a budget."""
    from tasks.core import config, loadtest
    from tasks.core.console import print_table
    from tasks.core.errors import HomelabError

    settings = config.load(c.config)
    target = loadtest.target(settings, url)
    requests = requests or settings.test.memory_requests
    concurrency = settings.test.memory_concurrency
    loadtest.check_load_bounds(target, requests, concurrency, settings.test.stress_max_requests, False)
    budget_mb = budget_mb or settings.test.memory_budget_mb
    if budget_mb < 0:
        raise HomelabError(
            f"--budget-mb {budget_mb} is negative", "give a budget in MB, e.g. --budget-mb 2048"
        )
    result = loadtest.memory(
        target,
        pid or loadtest.listening_pid(target.url),
        budget_mb,
        requests,
        concurrency,
    )
    verdict = "ok" if result.within_budget else "OVER BUDGET"
    row = (result.pid, f"{result.idle_mb:.0f}", f"{result.peak_mb:.0f}", budget_mb, verdict)
    print_table(f"Server memory at {target.url}", ["pid", "idle MB", "peak MB", "budget MB", "result"], [row])
    print_table("Load while measuring", loadtest.LOAD_COLUMNS, [result.load.row()])
    if not result.within_budget:
        raise HomelabError(
            f"peak RSS {result.peak_mb:.0f} MB is over the {budget_mb} MB budget",
            "serve a smaller model or context, or raise test.memory_budget_mb",
        )
    result.load.raise_on_losses()


@task(name="all", help={"extra": EXTRA_HELP, "json": JSON_HELP})
def all_(c: Context, extra: str = "", json: bool = False) -> None:
    """Run what CI runs: lint.all, then every suite that needs no GPU; one table of counts."""
    from tasks.core import suites

    results = [suites.lint(step) for step in suites.LINT_STEPS]
    results += [suites.pytest_suite(name, name, extra) for name in ("unit", "integration", "e2e")]
    suites.report("test.all", results)
