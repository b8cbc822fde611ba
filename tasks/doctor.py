"""Doctor: a cached, phased health check of this host (`fab -H host doctor` for another)."""

from __future__ import annotations

from invoke import Context

from tasks._task import task

STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


@task(
    default=True,
    auto_shortflags=False,
    help={
        "fast": "reuse cached results that are within their TTL and whose inputs did not change",
        "fix": "remediate what is safe (create directories, install missing extras) and say what was done",
        "dry_run": "say what --fix would do, change nothing",
        "json": "print the results as JSON (for scripts)",
        "hosts": "also check that every inventory host answers over SSH",
    },
)
def check(
    c: Context,
    fast: bool = False,
    fix: bool = False,
    dry_run: bool = False,
    json: bool = False,
    hosts: bool = False,
) -> None:
    """Check environment, configuration, models, server, hosts and disk; exit 1 on any failure."""
    import json as json_lib

    from tasks.core import doctor
    from tasks.core.console import messages, print_table, say, styled
    from tasks.core.errors import HomelabError

    report = doctor.doctor(c.config, fast=fast, fix=fix, dry_run=dry_run, hosts=hosts)
    if json:  # the report itself, on stdout for scripts; plain print: rich would add nothing here
        print(json_lib.dumps(report.to_json(), indent=1), flush=True)
    else:
        rows = [
            (
                r.phase,
                r.name,
                styled(r.status, STATUS_STYLE[r.status]),
                "cached" if r.cached else f"{r.seconds:.2f}s",
                "\n".join([r.detail, *r.actions]),
            )
            for r in report.results
        ]
        print_table("Doctor", ["phase", "check", "status", "took", "detail"], rows)
        cached = sum(r.cached for r in report.results)
        for note in report.notes:
            say(note)
        summary = f"{len(report.results)} checks ({cached} from cache) in {report.seconds:.2f}s"
        print(f"{summary}; log: {report.log_file}", file=messages(), flush=True)  # as say(markup=False)
    if not report.ok:
        failed = [r.name for r in report.results if r.status == "fail"]
        raise HomelabError(
            f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}", "see the detail column"
        )
