"""Rolling updates: each host's checkout moved to one commit, a host (or a batch) at a time, and a host
put back on its previous commit when its server does not come up healthy on the new one.

Everything on a host runs over one SSH connection, in its own checkout (its git, its bootstrap.sh, its
`inv server.*` tasks and config), so a host updates the way `fab -H host` would update it by hand.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.core import fleet, gateway, remote
from tasks.core.config import Settings
from tasks.core.console import messages
from tasks.core.errors import HomelabError
from tasks.core.remote import Target

SMOKE_PROMPT = "ping"  # one token of answer: the engine loads and generates, nothing more


@dataclass(frozen=True)
class HostPlan:
    """What deploying `commit` means for one host, read from the host before anything moves."""

    target: Target
    current: str  # the checkout's commit ("" when it could not be read)
    commit: str
    bootstrap: bool  # the move changes pyproject.toml or bootstrap.sh
    server_running: bool
    problem: str = ""  # why this host cannot take the commit; the rollout then does not start

    @property
    def up_to_date(self) -> bool:
        return self.current == self.commit


@dataclass(frozen=True)
class HostDeploy:
    """How the rollout went on one host."""

    host: str
    current: str
    commit: str
    bootstrap: bool
    server: str  # restarted | stopped | restarted on the previous commit | down | ""
    result: str  # updated | up to date | rolled back | ROLLBACK FAILED | not started
    seconds: float
    last_error: str = ""

    @property
    def ok(self) -> bool:
        return self.result in ("updated", "up to date")


class StepFailed(Exception):
    """A step of a host's update exited non-zero (or the connection broke): its name and last line."""

    def __init__(self, step: str, detail: str) -> None:
        self.step, self.detail = step, detail
        super().__init__(f"{step}: {detail}")


def plan(config: Any, settings: Settings, targets: Sequence[Target], commit: str) -> list[HostPlan]:
    """Ask every host at once where its checkout is and whether its server runs (nothing moves)."""
    return fleet.in_parallel(targets, lambda target: _probe(config, settings, target, commit))


def _probe(config: Any, settings: Settings, target: Target, commit: str) -> HostPlan:
    def refused(problem: str, current: str = "", running: bool = False) -> HostPlan:
        return HostPlan(target, current, commit, False, running, problem)

    try:
        connection = remote.open_connection(target, config, settings)
    except HomelabError as exc:
        return refused(exc.message)
    try:
        probed = remote.run_on(
            connection, target, remote.checkout_probe_command(target, commit), hide=True, in_stream=False
        )
        facts = fleet.facts_on(connection, target)
    except HomelabError as exc:
        return refused(exc.message)
    finally:
        connection.close()
    if probed.exited:
        return refused(fleet.last_line(probed.stderr) or f"git in {target.checkout} exited {probed.exited}")
    said = dict(line.partition(" ")[::2] for line in probed.stdout.splitlines() if line.strip())
    current = said.get("head", "")
    running = isinstance(facts, fleet.HostFacts) and facts.server.startswith("running")
    checkout = f"{target.name}:{target.checkout}"
    if isinstance(facts, fleet.ProbeFailure):
        return refused(facts.problem, current)
    if said.get("dirty", "0").strip() != "0":
        return refused(f"{checkout} has uncommitted changes (commit or stash them there)", current, running)
    if said.get("known") != "1":
        return refused(f"{commit[:7]} is not in {checkout}'s origin (push it there first)", current, running)
    if said.get("ahead") != "1":
        return refused(
            f"{checkout} at {current[:7]} is not behind {commit[:7]}: it has commits of its own",
            current,
            running,
        )
    return HostPlan(target, current, commit, bool(said.get("changed", "").strip()), running)


def roll_out(config: Any, settings: Settings, plans: Sequence[HostPlan], batch: int) -> list[HostDeploy]:
    """Update the hosts `batch` at a time, in the plans' order; after a batch with a failed host (put
    back on its commit), the hosts not reached yet are left as they are."""
    width = max(len(p.target.name) for p in plans)
    lock = threading.Lock()
    done: list[HostDeploy] = []
    for start in range(0, len(plans), batch):
        group = plans[start : start + batch]
        done += fleet.in_parallel(group, lambda p: update_host(config, settings, p, width, lock))
        if not all(result.ok for result in done):
            left = plans[start + batch :]
            done += [
                HostDeploy(p.target.name, p.current, p.commit, p.bootstrap, "", "not started", 0.0)
                for p in left
            ]
            break
    return done


@dataclass
class _Host:
    """One host's connection and output streams, running the steps of its update."""

    connection: Any
    target: Target
    out: fleet.PrefixedLines
    err: fleet.PrefixedLines

    def say(self, text: str) -> None:
        self.out.write(f"==> {text}\n")

    def step(self, name: str, command: str) -> None:
        """Run one step's command, its output prefixed by host; a failure raises StepFailed."""
        try:
            result = remote.run_on(
                self.connection,
                self.target,
                command,
                out_stream=self.out,
                err_stream=self.err,
                in_stream=False,
            )
        except HomelabError as exc:
            raise StepFailed(name, exc.message) from None
        if result.exited:
            last = fleet.last_line(result.stderr) or fleet.last_line(result.stdout)
            raise StepFailed(name, last or f"exited {result.exited}")

    def task(self, name: str, *words: str) -> None:
        self.step(name, remote.invoke_command(self.target, name, words))


def update_host(
    config: Any, settings: Settings, plan: HostPlan, width: int, lock: threading.Lock
) -> HostDeploy:
    """One host's update, in the order a rollout needs it:

    1. fast-forward the checkout to the commit
    2. bootstrap.sh, when the move changes pyproject.toml or bootstrap.sh
    3. server.restart, when a server was running
    4. server.health and a one-token server.chat, when a server was running

    A failing step puts the host back (`_roll_back`). With a gateway in front, the host is drained
    before step 1 and resumed after step 4 (or after the rollback).
    """
    started = time.monotonic()

    def outcome(server: str, result: str, error: str = "") -> HostDeploy:
        seconds = time.monotonic() - started
        return HostDeploy(
            plan.target.name, plan.current, plan.commit, plan.bootstrap, server, result, seconds, error
        )

    if plan.up_to_date:
        return outcome("running" if plan.server_running else "stopped", "up to date")
    prefix = plan.target.name.ljust(width)
    host = _Host(
        remote.open_connection(plan.target, config, settings),
        plan.target,
        fleet.PrefixedLines(prefix, messages(), lock),
        fleet.PrefixedLines(prefix, sys.stderr, lock),
    )
    drained = _drain(settings, host)
    try:
        try:
            _forward(host, plan)
            return outcome("restarted" if plan.server_running else "stopped", "updated")
        except StepFailed as failure:
            host.say(f"{failure.step} failed: {failure.detail}; putting {plan.current[:7]} back")
            server, result = _roll_back(host, plan)
            return outcome(server, result, str(failure))
    finally:
        if drained:
            host.say(f"gateway: {gateway.resume(settings, host.target.name)}")
        host.connection.close()
        host.out.close()
        host.err.close()


def _drain(settings: Settings, host: _Host) -> bool:
    """Take the host out of a running gateway's routing (its in-flight requests finish: the restart's
    graceful stop waits for them); False when no gateway runs here or it does not route to the host."""
    state = gateway.lab_state(settings)
    if state is None or host.target.name not in {h["name"] for h in state["hosts"]}:
        return False
    host.say(f"gateway: {gateway.drain(settings, host.target.name)}")
    return True


def _forward(host: _Host, plan: HostPlan) -> None:
    """Steps 1–4 of `update_host`."""
    host.say(f"fast-forward {plan.current[:7]} → {plan.commit[:7]}")
    host.step("fast-forward", remote.move_checkout_command(host.target, plan.commit, forward=True))
    if plan.bootstrap:
        host.say("pyproject.toml or bootstrap.sh changed: bootstrap.sh")
        host.step("bootstrap", remote.install_command(host.target))
    if plan.server_running:
        _restart(host)


def _restart(host: _Host) -> None:
    host.say("restart the server, then /health and a one-token answer")
    host.task("server.restart")
    host.task("server.health")
    host.task("server.chat", SMOKE_PROMPT, "--max-tokens=1", "--temperature=0")


def _roll_back(host: _Host, plan: HostPlan) -> tuple[str, str]:
    """Put the checkout back on its commit, bootstrap again if the forward move did, restart the server
    if it was running; (server, result) for the table."""
    steps: list[Callable[[], None]] = [
        lambda: host.step("rollback", remote.move_checkout_command(host.target, plan.current, forward=False))
    ]
    if plan.bootstrap:
        steps.append(lambda: host.step("bootstrap", remote.install_command(host.target)))
    if plan.server_running:
        steps.append(lambda: _restart(host))
    try:
        for run in steps:
            run()
    except StepFailed as failure:
        host.say(f"rollback: {failure}")
        return ("down" if plan.server_running else "stopped"), "ROLLBACK FAILED"
    return ("restarted on " + plan.current[:7] if plan.server_running else "stopped"), "rolled back"
