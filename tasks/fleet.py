"""Fleet: one task on many homelab hosts in parallel, and one status table for all of them."""

from __future__ import annotations

from invoke import Context

from tasks._task import JSON_HELP, task
from tasks.core.errors import HomelabError

_WHICH = {
    "hosts": "comma-separated inventory names or hosts, e.g. mac,gpu1,pi",
    "tag": "every inventory host with this tag (hosts.NAME.tags in invoke.yaml)",
    "all": "every host in the inventory",
}


@task(
    help={
        "task_name": "the task to run on each host, e.g. models.download",
        "args": 'its arguments as you would type them after `inv TASK`, e.g. "tinyllama --force"',
        "hosts": _WHICH["hosts"],
        "tag": _WHICH["tag"],
        "all_": _WHICH["all"],
    },
    positional=["task_name"],
    auto_shortflags=False,  # -h would shadow --help, -l looks like --list
)
def run(
    c: Context, task_name: str, args: str = "", hosts: str = "", tag: str = "", all_: bool = False
) -> None:
    """Run a task on many hosts at once: output prefixed by host, then one result row per host.

    No --json here: invoke would take the `--json` of `--args=--json` for fleet.run's own flag.
    """
    from tasks.core import config, fleet, remote
    from tasks.core.console import print_table

    settings = config.load(c.config)
    targets = remote.select(settings, hosts, tag, all_)
    results = fleet.run_task(c.config, settings, targets, task_name, remote.split_words(args))
    rows = [
        (r.host, "ok" if r.ok else "failed", r.exit_code, f"{r.seconds:.1f}", r.last_error) for r in results
    ]
    print_table(f"fleet.run {task_name}", ["host", "result", "exit", "seconds", "last error"], rows)
    failed = sum(not r.ok for r in results)
    if failed:
        raise HomelabError(f"{task_name} failed on {failed} of {len(results)} hosts", "see the table above")


@task(help={"hosts": _WHICH["hosts"], "tag": _WHICH["tag"], "json": JSON_HELP}, auto_shortflags=False)
def status(c: Context, hosts: str = "", tag: str = "", json: bool = False) -> None:
    """Show every inventory host: reachable?, checkout revision, server, model, health, free disk."""
    from tasks.core import config, fleet, remote
    from tasks.core.console import print_table

    settings = config.load(c.config)
    targets = remote.select(settings, hosts, tag, everything=not (hosts or tag))
    rows = []
    for target, facts in zip(targets, fleet.gather_facts(c.config, settings, targets), strict=True):
        if isinstance(facts, fleet.ProbeFailure):
            rows.append((target.name, "yes" if facts.reachable else "no", "", "", "", "", "", facts.problem))
            continue
        free = f"{facts.disk_free_gb:.1f} GB"
        rows.append((target.name, "yes", facts.revision, facts.server, facts.model, facts.health, free, ""))
    columns = ["host", "reachable", "revision", "server", "model", "health", "disk free", "problem"]
    print_table("Homelab", columns, rows)


@task(
    help={
        "rev": "branch, tag or commit to deploy, resolved in this checkout (or git.repo); default: its HEAD",
        "hosts": _WHICH["hosts"],
        "tag": _WHICH["tag"],
        "batch": "hosts updated at once (default 1: one after another)",
        "dry_run": "only show the plan: each host's commit, bootstrap?, server (hosts fetch, nothing moves)",
        "json": JSON_HELP,
    },
    auto_shortflags=False,
)
def deploy(
    c: Context,
    rev: str = "",
    hosts: str = "",
    tag: str = "",
    batch: int = 1,
    dry_run: bool = False,
    json: bool = False,
) -> None:
    """Roll a commit out to the hosts, one (or --batch N) at a time; a host that fails is put back.

    Each host fast-forwards its checkout, runs bootstrap.sh if pyproject.toml or bootstrap.sh changed,
    restarts its server if one was running and checks /health and a one-token answer. A host that
    fails returns to its previous commit (and server), and the hosts after it are not touched.
    Without --hosts or --tag: the whole inventory, in its order."""
    from tasks.core import config, git, remote
    from tasks.core import deploy as rollout
    from tasks.core.console import print_table

    if batch < 1:
        raise HomelabError(f"--batch {batch}: at least one host at a time", "pass --batch 1 or more")
    settings = config.load(c.config)
    targets = remote.select(settings, hosts, tag, everything=not (hosts or tag))
    commit = git.commit_of(git.open_repo(settings.git.repo), rev or "HEAD")
    plans = rollout.plan(c.config, settings, targets, commit)
    refused = [p for p in plans if p.problem]
    if dry_run or refused:
        rows = [
            (
                p.target.name,
                p.current[:7],
                p.commit[:7],
                "yes" if p.bootstrap else "no",
                "restart" if p.server_running else "stopped",
                p.problem or ("up to date" if p.up_to_date else "fast-forward"),
            )
            for p in plans
        ]
        columns = ["host", "from", "to", "bootstrap?", "server", "plan"]
        print_table(f"fleet.deploy {commit[:7]}: plan", columns, rows)
    if refused:
        raise HomelabError(
            f"{len(refused)} of {len(plans)} hosts cannot take {commit[:7]}: nothing was changed",
            "see the plan above",
        )
    if dry_run:
        return
    results = rollout.roll_out(c.config, settings, plans, batch)
    table = [
        (
            r.host,
            r.current[:7],
            r.commit[:7],
            "yes" if r.bootstrap else "no",
            r.server,
            r.result,
            f"{r.seconds:.1f}",
            r.last_error,
        )
        for r in results
    ]
    columns = ["host", "from", "to", "bootstrap?", "server", "result", "seconds", "last error"]
    print_table(f"fleet.deploy {commit[:7]}", columns, table)
    failed = [r for r in results if not r.ok]
    if failed:
        raise HomelabError(
            f"the rollout stopped at {failed[0].host}: {failed[0].result}", "see the table above"
        )


@task(
    help={
        "hosts": _WHICH["hosts"],
        "tag": _WHICH["tag"],
        "host": "address to serve the page on (off loopback only with server.api_key set)",
        "port": "port to serve the page on",
    },
    auto_shortflags=False,
)
def dashboard(c: Context, hosts: str = "", tag: str = "", host: str = "127.0.0.1", port: int = 8089) -> None:
    """Serve the lab's dashboard in a browser: every host's facts and models, refreshed live.

    The same page the gateway shows, fed by what fleet.status gathers; behind server.api_key. With
    the key, it can load, pin and unload models and restart a host's server (server.load/unload/restart
    run on the host); without one it is read-only.
    """
    from tasks.core import config, dashboard, remote, server_state
    from tasks.core.console import say

    settings = config.load(c.config)
    targets = remote.select(settings, hosts, tag, everything=not (hosts or tag))
    key = server_state.api_key(settings.server)
    source = dashboard.lab_source(c.config, settings, targets)
    actions = dashboard.LabTasks(c.config, settings, targets)

    def announce(url: str) -> None:
        say(f"the dashboard of {len(targets)} hosts is at {url} (Ctrl-C stops it)", markup=False)

    dashboard.serve(source, actions, host, port, key, settings.server.allowed_hosts, announce)
