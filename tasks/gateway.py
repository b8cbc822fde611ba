"""Gateway: one endpoint for the whole lab, routing each request to a host that can serve it."""

from __future__ import annotations

from typing import Any

from invoke import Context

from tasks._task import JSON_HELP, task

_LISTEN_HELP = {
    "host": "address to listen on (default: lab_gateway.host; off-loopback needs a key)",
    "port": "port to listen on (default: lab_gateway.port)",
    "api_key": "key clients must send (default: lab_gateway.api_key); shows in `ps`: prefer its api_key_file",
}


def _settings(c: Context) -> Any:
    from tasks.core import config

    return config.load(c.config)


@task(help=_LISTEN_HELP)
def start(c: Context, host: str = "", port: int = 0, api_key: str = "") -> None:
    """Start the gateway in the background in front of every host in invoke.yaml's `hosts`."""
    from tasks.core import gateway
    from tasks.core.console import say

    settings = _settings(c)
    where = gateway.start(settings, gateway.engine(settings, host, port, api_key))
    say(f"Gateway at {where} in front of {len(settings.hosts)} hosts (inv gateway.status)")


@task
def stop(c: Context) -> None:
    """Stop the gateway: it stops listening, in-flight requests finish within lab_gateway.stop_grace_s."""
    from tasks.core import gateway
    from tasks.core.console import say
    from tasks.core.server_state import Running, Stale

    found = gateway.stop(_settings(c))
    if isinstance(found, Running):
        say(f"stopped (pid {found.pid})")
    elif isinstance(found, Stale):
        say(f"not running (stale pidfile removed: pid {found.pid})")
    else:
        say("no gateway running")


@task(help={"json": JSON_HELP})
def status(c: Context, json: bool = False) -> None:
    """Show each host behind the gateway: state, models (loaded ones starred), in-flight and routed."""
    from tasks.core import gateway
    from tasks.core.console import print_table, say

    state = gateway.lab_state(_settings(c))
    if state is None:
        say("no gateway running (start one: inv gateway.start)")
        return
    rows = [
        (
            h["name"],
            h["state"],
            h["priority"],
            h["weight"],
            " ".join(f"{m}*" if m in h["loaded"] else m for m in h["models"]),
            h["in_flight"],
            h["routed"],
            h["retried"],
            h["url"],
        )
        for h in state["hosts"]
    ]
    columns = ["host", "state", "priority", "weight", "models", "in flight", "routed", "retried", "url"]
    print_table(f"Gateway at {state['listen']} (haproxy)", columns, rows)


@task(help={"lines": "lines to show (default: lab_gateway.log_lines)", "follow": "keep printing new lines"})
def logs(c: Context, lines: int = 0, follow: bool = False) -> None:
    """Show the gateway's log (state changes and HAProxy's own messages; never a header or a key)."""
    from tasks.core import gateway
    from tasks.core import server as core
    from tasks.core.console import say

    settings = _settings(c)
    log, count = gateway.files(settings).log, lines or settings.lab_gateway.log_lines
    if not log.exists():
        say(f"no log yet at {log} (start the gateway: inv gateway.start)", markup=False)
        return
    for line in core.follow(log, count) if follow else core.tail(log, count).splitlines():
        say(line, markup=False)


@task(help={**_LISTEN_HELP, "reveal": "show the keys too (they are redacted by default)"})
def config(c: Context, host: str = "", port: int = 0, api_key: str = "", reveal: bool = False) -> None:
    """Print the HAProxy configuration the gateway would start with (keys redacted unless --reveal)."""
    from tasks.core import gateway
    from tasks.core.console import say

    settings = _settings(c)
    say(gateway.config_text(settings, gateway.engine(settings, host, port, api_key), reveal), markup=False)


@task(help={"host": "inventory name of the host to drain"})
def drain(c: Context, host: str) -> None:
    """Route no new requests to HOST; the ones in flight there finish (before a deploy, say)."""
    from tasks.core import gateway
    from tasks.core.console import say

    say(gateway.drain(_settings(c), host), markup=False)


@task(help={"host": "inventory name of the host to resume"})
def resume(c: Context, host: str) -> None:
    """Route requests to HOST again after gateway.drain."""
    from tasks.core import gateway
    from tasks.core.console import say

    say(gateway.resume(_settings(c), host), markup=False)
