"""Server: start, stop and watch the OpenAI + Anthropic inference server on this host."""

from __future__ import annotations

from typing import Any

from invoke import Context

from tasks._task import task

_SERVE_HELP = {
    "model": "catalog name to serve (default: server.model)",
    "host": "address to bind (default: server.host; off-loopback needs an API key)",
    "port": "port to listen on (default: server.port)",
    "engine": "auto | llama_cpp | mlx (default: server.engine)",
    "api_key": "key clients must send (default: server.api_key)",
    "context_size": "tokens of context (default: server.context_size)",
    "slots": "requests generating at once (default: server.slots)",
    "queue_size": "requests waiting for a slot before 503 (default: server.queue_size)",
    "alias": "another name (fnmatch pattern) for the model; repeatable, replaces server.model_aliases",
}


def _served(c: Context, **flags: Any) -> Any:
    from tasks.core import config
    from tasks.core import server as core

    return core.served_settings(config.load(c.config), **flags)


def _files(c: Context) -> Any:
    from tasks.core import config
    from tasks.core.server import StateFiles

    return StateFiles(config.load(c.config).server.state_dir)


def _settings(c: Context) -> Any:
    from tasks.core import config

    return config.load(c.config).server


@task(help=_SERVE_HELP, iterable=["alias"])
def start(
    c: Context,
    model: str = "",
    host: str = "",
    port: int = 0,
    engine: str = "",
    api_key: str = "",
    context_size: int = 0,
    slots: int = 0,
    queue_size: int = 0,
    alias: list[str] | None = None,
) -> None:
    """Start the server in the background and wait until it answers."""
    from tasks.core import server as core
    from tasks.core.console import console

    served = _served(
        c,
        model=model,
        host=host,
        port=port,
        engine=engine,
        api_key=api_key,
        context_size=context_size,
        slots=slots,
        queue_size=queue_size,
        model_aliases=alias,
    )
    with console().status(f"Loading {served.model_name}…"):
        running = core.start(served, _files(c), _settings(c).start_timeout_s)
    console().print(
        f"Serving [bold]{running.model}[/] ({running.engine}) at {running.url}  (pid {running.pid})"
    )


@task
def stop(c: Context) -> None:
    """Stop the server: SIGTERM, in-flight requests finish within server.stop_grace_s, then SIGKILL."""
    from tasks.core import server as core

    pid = core.stop(_files(c), _settings(c).stop_grace_s)
    print(f"stopped (pid {pid})" if pid else "no server running")


@task(help=_SERVE_HELP, iterable=["alias"])
def restart(
    c: Context,
    model: str = "",
    host: str = "",
    port: int = 0,
    engine: str = "",
    api_key: str = "",
    context_size: int = 0,
    slots: int = 0,
    queue_size: int = 0,
    alias: list[str] | None = None,
) -> None:
    """Stop the server if it runs, then start it (with new flags, if given)."""
    stop(c)
    start(c, model, host, port, engine, api_key, context_size, slots, queue_size, alias)


@task(aliases=["ps"])
def status(c: Context) -> None:
    """Show the running server: pid, uptime, model, engine, URL, health."""
    import time

    from tasks.core import server as core
    from tasks.core.console import print_table

    running = core.status(_files(c))
    if running is None:
        print("no server running (start one: inv server.start)")
        return
    uptime = time.strftime("%H:%M:%S", time.gmtime(time.time() - running.started))
    rows = [(running.pid, uptime, running.model, running.engine, running.url, running.health)]
    print_table("Inference server", ["pid", "uptime", "model", "engine", "url", "health"], rows)


@task(
    help={
        "follow": "keep printing new lines until Ctrl-C",
        "lines": "lines to show (default: server.log_lines)",
    }
)
def logs(c: Context, follow: bool = False, lines: int = 0) -> None:
    """Show the server's log (the current or last run)."""
    from tasks.core import server as core

    files = _files(c)
    count = lines or _settings(c).log_lines
    if not files.log.exists():
        print(f"no log yet at {files.log} (start the server: inv server.start)")
        return
    if not follow:
        print(core.tail(files.log, count))
        return
    for line in core.follow(files.log, count):
        print(line, flush=True)


@task(help=_SERVE_HELP, iterable=["alias"])
def run(
    c: Context,
    model: str = "",
    host: str = "",
    port: int = 0,
    engine: str = "",
    api_key: str = "",
    context_size: int = 0,
    slots: int = 0,
    queue_size: int = 0,
    alias: list[str] | None = None,
) -> None:
    """Run the server in the foreground (Ctrl-C stops it); logs go to the terminal."""
    from inference_server.__main__ import serve

    serve(
        _served(
            c,
            model=model,
            host=host,
            port=port,
            engine=engine,
            api_key=api_key,
            context_size=context_size,
            slots=slots,
            queue_size=queue_size,
            model_aliases=alias,
        )
    )


@task
def health(c: Context) -> None:
    """Ask the server's /health; exits non-zero unless it is healthy."""
    from tasks.core import server as core
    from tasks.core.errors import HomelabError

    url = core.client_url(core.current(_files(c), _served(c)))
    code, answer = core.health(url)
    if code != 200:
        fix = "start it: inv server.start" if code == 0 else "see inv server.logs"
        raise HomelabError(f"{url}: {answer.get('detail') or answer.get('status')}", fix)
    print(f"ok: {answer['model']} on {answer['engine']} at {url}")


@task(
    help={
        "prompt": "what to ask",
        "max_tokens": "cap on the answer's length (default: server.chat_max_tokens; 0 there = no cap)",
        "temperature": "sampling temperature, 0 = greedy (default: server.chat_temperature)",
    }
)
def chat(c: Context, prompt: str, max_tokens: int = 0, temperature: float = -1.0) -> None:
    """Ask the running server one question and stream the answer."""
    from tasks.core import server as core

    settings = _settings(c)
    served = core.current(_files(c), _served(c))
    core.chat(
        core.client_url(served),
        served.api_key,
        served.model_name,
        prompt,
        max_tokens or settings.chat_max_tokens,
        settings.chat_temperature if temperature < 0 else temperature,
        on_text=lambda text: print(text, end="", flush=True),
    )
    print()


@task(
    name="claude",
    help={"print_only": "print the environment as shell lines (for eval) instead of launching `claude`"},
)
def claude(c: Context, print_only: bool = False) -> None:
    """Point Claude Code at this server: launch `claude` with the right environment, or print it.

    `eval "$(inv server.claude --print-only)"` sets it in the current shell (the key included)."""
    import sys

    from tasks.core import claude_code
    from tasks.core import server as core

    settings = _settings(c)
    served = core.current(_files(c), _served(c))
    env = claude_code.environment(
        core.client_url(served),
        served.api_key,
        served.context_size,
        settings.claude_model,
        settings.claude_small_fast_model,
    )
    if warning := claude_code.context_warning(served.model_name, served.context_size):
        print(f"warning: {warning}", file=sys.stderr)
    program = claude_code.program()
    if print_only or program is None:
        print("\n".join(claude_code.shell_lines(env)))
        if program is None and not print_only:
            print("# `claude` is not installed: npm install -g @anthropic-ai/claude-code")
        return
    claude_code.launch(program, env)
