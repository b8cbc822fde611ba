"""Remote: set up and update the project's checkout on a homelab host; this host's facts for the fleet."""

from __future__ import annotations

from invoke import Context

from tasks._remote import exit_like
from tasks._task import task


@task(
    help={
        "host": "inventory name (hosts: in invoke.yaml), ssh_config alias or user@host:port",
        "install": "run bootstrap.sh after cloning or updating (--no-install: the checkout only)",
    }
)
def bootstrap(c: Context, host: str, install: bool = True) -> None:
    """Clone (or fast-forward) the project on HOST and run its bootstrap.sh: a fresh machine, ready."""
    from tasks.core import config, remote

    settings = config.load(c.config)
    target = remote.resolve(host, settings)
    command = remote.bootstrap_command(target, remote.repo_url(settings), install)
    exit_like(remote.execute(c.config, settings, target, command, pty=remote.at_terminal()))


@task(help={"host": "inventory name (hosts: in invoke.yaml), ssh_config alias or user@host:port"})
def sync(c: Context, host: str) -> None:
    """Fast-forward the project's checkout on HOST, so catalog.yaml and invoke.yaml match everywhere."""
    from tasks.core import config, remote

    settings = config.load(c.config)
    target = remote.resolve(host, settings)
    command = remote.sync_command(target)
    exit_like(remote.execute(c.config, settings, target, command, pty=remote.at_terminal()))


@task(help={"json": "print one JSON line (what fleet.status reads) instead of a table"})
def facts(c: Context, json: bool = False) -> None:
    """Show this host's checkout revision, server, model, health and free disk for models."""
    from tasks.core import config, fleet
    from tasks.core.console import print_json, print_table

    found = fleet.local_facts(config.load(c.config))
    if json:
        print_json(fleet.facts_json(found))
        return
    row = (found.revision, found.server, found.model, found.health, f"{found.disk_free_gb:.1f} GB")
    print_table("This host", ["revision", "server", "model", "health", "disk free"], [row])
