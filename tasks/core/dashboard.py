"""fleet.dashboard: the lab view of inference_server.ui fed by what fleet.status gathers, served here.

The view asks its `LabSource` on every refresh; this one asks every host for its facts (one
`remote.facts --json` each, in parallel), which include the models its server reports. Its actions
are the server tasks themselves (`server.load NAME [--pin]`, `server.unload`, `server.restart`) run in
the host's own checkout, as `fab -H HOST` runs them, so the host's own key and config do the work.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tasks.core import fleet, remote
from tasks.core.config import Settings
from tasks.core.errors import HomelabError
from tasks.core.remote import Target

if TYPE_CHECKING:
    from inference_server.ui.lab import ActionDone, HostView, LabActions, LabSource


def host_view(name: str, facts: fleet.HostFacts | fleet.ProbeFailure) -> HostView:
    """One host as the lab view shows it."""
    from inference_server.ui.lab import HostView

    if isinstance(facts, fleet.ProbeFailure):
        return HostView(name, facts.reachable, problem=facts.problem)
    return HostView(
        name,
        True,
        revision=facts.revision,
        server=facts.server,
        health=facts.health,
        engine=facts.engine,
        memory_free_gb=facts.memory_free_gb,
        disk_free_gb=facts.disk_free_gb,
        models=facts.models,
    )


def lab_source(config: Any, settings: Settings, targets: Sequence[Target]) -> LabSource:
    def hosts() -> list[HostView]:
        gathered = fleet.gather_facts(config, settings, targets)
        return [host_view(t.name, facts) for t, facts in zip(targets, gathered, strict=True)]

    return hosts


class LabTasks:
    """The lab view's actions on `targets`: one ssh connection each, the task, then the host's facts."""

    def __init__(self, config: Any, settings: Settings, targets: Sequence[Target]) -> None:
        self.config = config
        self.settings = settings
        self.targets = {t.name: t for t in targets}

    def load(self, host: str, model: str, pin: bool) -> ActionDone:
        # --name=: a name that looks like a flag stays the name
        return self._run(host, "server.load", [f"--name={model}", *(["--pin"] if pin else [])])

    def unload(self, host: str, model: str) -> ActionDone:
        return self._run(host, "server.unload", [f"--name={model}"])

    def restart(self, host: str) -> ActionDone:
        return self._run(host, "server.restart", [])

    def _run(self, host: str, task: str, words: list[str]) -> ActionDone:
        from inference_server.ui.lab import ActionDone, UnknownHost

        target = self.targets.get(host)
        if target is None:
            raise UnknownHost(f"no host {host!r} in this dashboard: it shows {', '.join(self.targets)}")
        connection = remote.open_connection(target, self.config, self.settings)
        try:
            command = remote.invoke_command(target, task, words)
            try:
                result = remote.run_on(connection, target, command, hide=True, in_stream=False)
            except HomelabError as exc:
                return ActionDone(False, exc.message, host_view(host, fleet.ProbeFailure(False, exc.message)))
            if result.exited:
                said = fleet.last_line(result.stderr) or f"{task} exited {result.exited}"
            else:
                said = fleet.last_line(result.stdout) or f"{task} done"
            return ActionDone(
                not result.exited, f"{host}: {said}", host_view(host, fleet.facts_on(connection, target))
            )
        finally:
            connection.close()


def serve(
    source: LabSource,
    actions: LabActions,
    host: str,
    port: int,
    api_key: str,
    allowed_hosts: list[str],
    announce: Callable[[str], None],
) -> None:
    """Serve the lab view until Ctrl-C; off loopback only with a key, as the server itself.
    `announce(url)` is called once the port listens, so whoever reads it can connect at once."""
    import uvicorn

    from inference_server.settings import is_loopback
    from inference_server.ui.lab import create_app
    from tasks.core.server_state import client_url

    if not api_key and not is_loopback(host):
        raise HomelabError(f"refusing to serve the dashboard on {host} without a key", "set server.api_key")
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise HomelabError(f"cannot listen on {host}:{port}: {exc.strerror}", "pick another --port") from None
    with sock:
        announce(f"{client_url(host, sock.getsockname()[1])}/ui/lab")
        web = uvicorn.Server(
            uvicorn.Config(create_app(source, api_key, allowed_hosts, actions), log_level="warning")
        )
        web.run(sockets=[sock])
