"""Server: start, stop and watch the OpenAI + Anthropic inference server on this host."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from invoke import Context

from tasks._task import JSON_HELP, SAMPLING_HELP, task
from tasks.core.errors import HomelabError

_SERVE_HELP = {
    "model": "catalog name to serve (default: server.model)",
    "host": "address to bind (default: server.host; off-loopback needs an API key)",
    "port": "port to listen on (default: server.port)",
    "engine": "auto | llama_cpp | mlx (default: server.engine)",
    "api_key": "key clients must send (default: server.api_key); shows in `ps`: prefer --api-key-file",
    "api_key_file": "file (mode 600) holding the key clients must send (default: server.api_key_file)",
    "context_size": "tokens of context (default: server.context_size)",
    "slots": "requests generating at once (default: server.slots)",
    "queue_size": "requests waiting for a slot before 503; 0 = none wait (default -1: server.queue_size)",
    "models": "catalog names this server may serve, comma-separated (default: server.models)",
    "alias": "PATTERN[=MODEL]: another name (fnmatch) for a model (default: server.model); repeatable,"
    " replaces server.model_aliases",
    "rpc": "hosts (inventory names, comma-separated) whose rpc-server takes a share of the model's "
    "layers, over SSH (default: server.rpc_hosts)",
}


def _serve_flags(
    c: Context,
    model: str = "",
    host: str = "",
    port: int = 0,
    engine: str = "",
    api_key: str = "",
    api_key_file: str = "",
    context_size: int = 0,
    slots: int = 0,
    queue_size: int = -1,
    models: str = "",
    alias: list[str] | None = None,
    rpc: str = "",
) -> None:
    """The flags start, restart and run share, declared once: `_serving` gives each task this
    signature (what invoke parses and `--help` shows) and the task body takes them as **flags."""


def _serving(body: Callable[..., None] | None = None, **own_help: str) -> Any:
    """`@_serving`, or `@_serving(flag="help")` for a task that adds flags of its own: declared in its
    body's signature before **flags, with defaults, they follow the shared ones."""

    def decorate(body: Callable[..., None]) -> Any:
        shared = list(inspect.signature(_serve_flags).parameters.values())
        own = [p for p in inspect.signature(body).parameters.values() if p.name in own_help]
        signature = inspect.signature(_serve_flags).replace(parameters=[*shared, *own])
        body.__signature__ = signature  # type: ignore[attr-defined]
        return task(help={**_SERVE_HELP, **own_help}, iterable=["alias"])(body)

    return decorate(body) if body is not None else decorate


def _state(c: Context) -> tuple[Any, Any]:
    """The settings (loaded once per task) and the server's state files."""
    from tasks.core import config
    from tasks.core.server_state import StateFiles

    settings = config.load(c.config)
    return settings, StateFiles(settings.server.state_dir)


def _served(settings: Any, flags: dict[str, Any]) -> Any:
    from tasks.core import server as core

    return core.served_settings(settings, **flags)


@_serving
def start(c: Context, **flags: Any) -> None:
    """Start the server in the background and wait until it answers.

    With the service installed (server.install-service), systemd or launchd starts it."""
    settings, files = _state(c)
    _start(c, settings, files, flags)


@task
def stop(c: Context) -> None:
    """Stop the server: SIGTERM, in-flight requests finish within server.stop_grace_s, then SIGKILL.

    With the service installed, through systemd or launchd (which then leaves it stopped)."""
    settings, files = _state(c)
    _stop(settings, files)


@_serving
def restart(c: Context, **flags: Any) -> None:
    """Stop the server if it runs, then start it (with new flags, if given).

    The new settings are checked first, so a bad flag leaves the running server alone."""
    settings, files = _state(c)
    if _managed(flags) is None:
        _split(settings, flags)
    _stop(settings, files)
    _start(c, settings, files, flags)


def _managed(flags: dict[str, Any]) -> Any:
    """The service manager that runs the server here, if install-service was run; flags then refused
    (the service serves what was installed)."""
    from tasks.core import server as core
    from tasks.core import service

    kind = service.installed()
    given = sorted(k for k, v in flags.items() if core.flag_given(k, v))
    if kind and given:
        raise HomelabError(
            f"the server runs under {kind} with its installed settings: --{given[0]} cannot apply",
            "change invoke.yaml (or pass the flags) and run inv server.install-service again",
        )
    return kind


def _here_only(flags: dict[str, Any], what: str) -> None:
    if flags.pop("rpc", ""):
        raise HomelabError(f"{what} serves from this host only", "split a model with inv server.start --rpc")


def _split(settings: Any, flags: dict[str, Any]) -> tuple[Any, list[str]]:
    """The served settings and the hosts whose rpc-server takes a share (--rpc, else server.rpc_hosts)."""
    rest = dict(flags)
    rpc = rest.pop("rpc", "")
    hosts = [h.strip() for h in rpc.split(",") if h.strip()] if rpc else settings.server.rpc_hosts
    return _served(settings, {**rest, "rpc_helpers": len(hosts)}), hosts


def _start(c: Context, settings: Any, files: Any, flags: dict[str, Any]) -> None:
    from tasks.core import server as core
    from tasks.core.console import console, say

    kind = _managed(flags)
    timeout_s = settings.server.start_timeout_s
    if kind:
        with console().status(f"Starting the {kind} service…"):
            running = core.start_managed(files, kind, timeout_s)
    else:
        served, hosts = _split(settings, flags)
        if hosts:  # the tunnel keeper is forked before a spinner's thread starts
            say(f"Starting rpc-server on {', '.join(hosts)} (SSH tunnels)…")
            running = core.start_split(served, files, timeout_s, hosts, c.config, settings)
        else:
            with console().status(f"Loading {served.default_model}…"):
                running = core.start(served, files, timeout_s)
    by = f", {kind}" if kind else ""
    say(f"Serving [bold]{running.model}[/] ({running.engine}) at {running.url}  (pid {running.pid}{by})")


def _stop(settings: Any, files: Any) -> None:
    from tasks.core import server as core
    from tasks.core import service
    from tasks.core.console import say
    from tasks.core.server_state import Running, Stale

    kind = service.installed()
    if kind:
        pid = service.main_pid(kind)
        service.stop(kind)
        say(f"stopped (pid {pid}, {kind})" if pid else f"not running ({kind} service stopped)")
        return
    found = core.stop(files, settings.server.stop_grace_s)
    if isinstance(found, Running):
        say(f"stopped (pid {found.pid})")
    elif isinstance(found, Stale):
        say(_stale(found))
    else:
        say("no server running")


def _stale(found: Any) -> str:
    return f"not running (stale pidfile removed: pid {found.pid} is not the server it recorded)"


@_serving
def install_service(c: Context, **flags: Any) -> None:
    """Run the server as a user service that starts at boot and again after a crash (systemd or launchd).

    Its settings are invoke.yaml's (and these flags), written now to server.state_dir/service.json
    (mode 600: the API key stays off every command line); its log is server.logs'. Install again after
    changing invoke.yaml. server.start/stop/status then go through the service manager."""
    from tasks.core import server_state, service
    from tasks.core.console import say
    from tasks.core.server_state import Running

    _here_only(flags, "the service")
    settings, files = _state(c)
    served = _served(settings, flags)
    if isinstance(server_state.look(files), Running):
        raise HomelabError("a server started by server.start runs here", "stop it first: inv server.stop")
    done = service.install(served, files)
    say(f"installed {done.path} ({done.manager}): {served.default_model} at {served.url}", markup=False)
    if done.advice:
        say(done.advice, markup=False)


@task
def uninstall_service(c: Context) -> None:
    """Stop the user service and remove it (the server no longer starts at boot)."""
    from tasks.core import service
    from tasks.core.console import say

    removed = service.uninstall(_state(c)[1])
    say(f"removed {removed}" if removed else "no service installed here", markup=False)


@task(help={"json": JSON_HELP})
def status(c: Context, json: bool = False) -> None:
    """Show the running server: pid, uptime, model, engine, URL, health."""
    import time

    from tasks.core import server as core
    from tasks.core import service
    from tasks.core.console import print_table, say
    from tasks.core.server_state import Stale

    files = _state(c)[1]
    found = core.status(files)
    kind = service.installed()
    if found is None and kind:
        pid = service.main_pid(kind)
        if not pid:
            say(f"not running (the {kind} service is installed: inv server.start starts it)")
            return
        found = core.managed_status(files, kind, pid)
    if isinstance(found, Stale):
        say(_stale(found))
        return
    if found is None:
        say("no server running (start one: inv server.start)")
        return
    uptime = time.strftime("%H:%M:%S", time.gmtime(time.time() - found.started))
    rows = [(found.pid, uptime, found.model, found.engine, found.url, found.health, found.manager)]
    columns = ["pid", "uptime", "model", "engine", "url", "health", "run by"]
    print_table("Inference server", columns, rows)
    _print_helpers(_state(c)[1])


def _print_helpers(files: Any) -> None:
    """The RPC helpers' table, when the server's model is split over some."""
    from tasks.core import rpc
    from tasks.core.catalog import describe_size
    from tasks.core.console import print_table
    from tasks.core.errors import HomelabError

    tunnels = rpc.running(files.folder)
    if tunnels is None:
        return
    try:
        helpers = rpc.helper_figures(tunnels)
        state = "ok"
    except HomelabError as exc:
        helpers, state = tunnels.helpers, exc.message
    sizes = [map(describe_size, (h.share_bytes, h.free_bytes, h.sent_bytes)) for h in helpers]
    rows = [(h.host, h.pid, h.port, h.local, *size, state) for h, size in zip(helpers, sizes, strict=True)]
    columns = ["host", "rpc-server pid", "port there", "tunnel here", "share", "free there", "sent", "state"]
    print_table("RPC helpers", columns, rows)


@task(help={"all": "also list the models that are not loaded", "json": JSON_HELP})
def ps(c: Context, all: bool = False, json: bool = False) -> None:
    """Show the models the server has loaded: memory, context, slots, busy, until when."""
    from tasks.core import server as core
    from tasks.core.catalog import describe_size
    from tasks.core.console import print_table, say

    listed = [m for m in core.models(_endpoint(c)[1]) if all or m.state != "unloaded"]
    if not listed:
        say("no model loaded (a request loads one: inv server.load NAME)")
        return
    rows: list[tuple[Any, ...]] = [
        (
            m.name + (" (default)" if m.default else ""),
            m.engine,
            m.state,
            describe_size(m.resident_bytes) if m.resident_bytes else "",
            describe_size(m.estimate_bytes),
            m.context_size,
            m.slots,
            m.active_requests,
            _until(m),
        )
        for m in listed
    ]
    columns = ["model", "engine", "state", "memory", "estimate", "context", "slots", "busy", "until"]
    if any(m.devices for m in listed):  # a model split over RPC helpers: where its layers are
        columns.append("devices")
        rows = [(*row, m.devices) for row, m in zip(rows, listed, strict=True)]
    print_table("Models", columns, rows)


def _until(model: Any) -> str:
    if model.state != "loaded":
        return ""
    if model.pinned:
        return "pinned"
    if model.active_requests:
        return "busy"
    if model.expires_in_s is None:
        return "forever"
    return f"{model.expires_in_s:.0f} s"


@task(help={"name": "catalog name or alias", "pin": "keep it loaded whatever happens"})
def load(c: Context, name: str, pin: bool = False) -> None:
    """Load a model into the running server now (evicting idle ones if the memory budget needs it)."""
    from tasks.core import server as core
    from tasks.core.console import console, say

    with console().status(f"Loading {name}…"):
        loaded = core.load(_endpoint(c)[1], name, pin)
    say(f"{loaded.name} loaded" + (" and pinned" if loaded.pinned else ""), markup=False)


@task(help={"name": "catalog name or alias"})
def unload(c: Context, name: str) -> None:
    """Unload a model (and unpin it); with requests in flight it unloads when they end."""
    from tasks.core import server as core
    from tasks.core.console import say

    unloaded = core.unload(_endpoint(c)[1], name)
    busy = f" once its {unloaded.active_requests} request(s) end" if unloaded.state == "loaded" else ""
    say(f"{unloaded.name} unloaded{busy}", markup=False)


@task(
    help={
        "follow": "keep printing new lines until Ctrl-C",
        "lines": "lines to show (default: server.log_lines)",
    }
)
def logs(c: Context, follow: bool = False, lines: int = 0) -> None:
    """Show the server's log (the current or last run)."""
    from tasks.core import server as core
    from tasks.core.console import say

    settings, files = _state(c)
    count = lines or settings.server.log_lines
    if not files.log.exists():
        say(f"no log yet at {files.log} (start the server: inv server.start)", markup=False)
        return
    if not follow:
        say(core.tail(files.log, count), markup=False)
        return
    for line in core.follow(files.log, count):
        say(line, markup=False)


@_serving(reload="restart it when a .py file under inference_server/ changes (for developing it)")
def run(c: Context, reload: bool = False, **flags: Any) -> None:
    """Run the server in the foreground (Ctrl-C stops it); logs go to the terminal.

    With --reload each change restarts it in a fresh process and says what the restart cost."""
    _here_only(flags, "server.run")
    settings, files = _state(c)
    served = _served(settings, flags)
    if not reload:
        from inference_server.__main__ import serve

        serve(served)
        return
    from tasks.core import server as core
    from tasks.core.console import say

    core.run_reloading(
        served, files, settings.server.start_timeout_s, on_event=lambda line: say(line, markup=False)
    )


def _endpoint(c: Context) -> Any:
    """Where the running server listens (whatever model it serves); else the configured address."""
    from tasks.core import server_state

    settings, files = _state(c)
    return settings.server, server_state.endpoint(files, settings.server)


@task
def health(c: Context) -> None:
    """Ask the server's /health; exits non-zero unless it is healthy."""
    from tasks.core import server_state
    from tasks.core.console import say

    url = _endpoint(c)[1].url
    answer = server_state.health(url)
    if not answer.ok:
        fix = "start it: inv server.start" if answer.code == 0 else "see inv server.logs"
        raise HomelabError(f"{url}: {answer.detail}", fix)
    say(f"ok: {answer.body['model']} on {answer.body['engine']} at {url}", markup=False)


@task(help={"prompt": "what to ask", **SAMPLING_HELP})
def chat(c: Context, prompt: str, max_tokens: int = 0, temperature: float = -1.0) -> None:
    """Ask the running server one question and stream the answer."""
    from tasks.core import server as core
    from tasks.core.console import say

    configured, endpoint = _endpoint(c)
    tokens, temperature = configured.sampling(max_tokens, temperature)
    core.chat(endpoint, prompt, tokens, temperature, on_text=lambda text: say(text, markup=False, end=""))
    say("")


@task(
    name="claude",
    help={
        "print_only": "print the environment as shell lines (for eval) instead of launching `claude`",
        "max_output_tokens": "a lower cap on each answer than the one that fits the context (0: that one)",
    },
)
def claude(c: Context, print_only: bool = False, max_output_tokens: int = 0) -> None:
    """Point Claude Code at this server: launch `claude` with the right environment, or print it.

    `eval "$(inv server.claude --print-only)"` sets it in the current shell (the key included)."""
    import sys

    from tasks.core import claude_code
    from tasks.core import server as core
    from tasks.core.console import say

    configured, endpoint = _endpoint(c)
    env = claude_code.environment(
        endpoint.url,
        endpoint.api_key,
        configured.claude_model,
        configured.claude_small_fast_model,
        claude_code.chosen_cap(endpoint.context_size, max_output_tokens),
    )
    if warning := claude_code.context_warning(endpoint.model, endpoint.context_size):
        print(f"warning: {warning}", file=sys.stderr)
    tiers = {"main": configured.claude_model, "haiku": configured.claude_small_fast_model}
    routed = core.routes(endpoint, list(tiers.values()))
    if routed:
        print(
            "# " + ", ".join(f"{t} tier {n} → {routed[n] or '(not served)'}" for t, n in tiers.items()),
            file=sys.stderr,
        )
    for name in [n for n in tiers.values() if routed and routed[n] is None]:
        print(f"warning: the server does not serve '{name}': add it to server.model_aliases", file=sys.stderr)
    program = claude_code.program()
    if print_only or program is None:
        say("\n".join(claude_code.shell_lines(env)), markup=False)
        if program is None and not print_only:
            say("# `claude` is not installed: npm install -g @anthropic-ai/claude-code", markup=False)
        return
    claude_code.launch(program, env)


@task(name="rpc-helper")
def rpc_helper(c: Context) -> None:
    """Become llama.cpp's rpc-server on a free port of 127.0.0.1 (server.start --rpc runs it over SSH).

    Its weight cache (-c) lives in server.state_dir, so a second start does not resend the weights; the
    room it reports for the model's share is this host's available memory, capped by its own
    server.memory_budget_mb when set."""
    from tasks.core import rpc

    settings, files = _state(c)
    rpc.exec_helper(files.folder, settings.server.memory_budget_mb * 2**20)
