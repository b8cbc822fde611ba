"""Hosts and the commands run on them: the inventory, `inv TASK ARGS` in a host's checkout, bootstrap, sync.

Every remote command line is built here from shlex-quoted words, so a model name or prompt never runs
as shell on the host.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.core.config import PROJECT_ROOT, SSH_NAME_RULE, Settings, unsafe_ssh_name
from tasks.core.errors import HomelabError
from tasks.core.ssh import Endpoint

CONNECTION_FAILED = 255  # what ssh itself exits with when it cannot connect


@dataclass(frozen=True)
class Target:
    """A host as named on the command line, resolved through the inventory."""

    name: str
    endpoint: Endpoint
    checkout: str
    python: str


def resolve(name: str, settings: Settings, user: str = "", port: int = 0) -> Target:
    """An inventory name to its entry; anything else is a plain host (ssh_config alias, user@host:port),
    with `user` and `port` if the caller already parsed them out of it."""
    entry = settings.hosts.get(name)
    if entry is None:
        for word in (name, user):
            if unsafe_ssh_name(word):
                raise HomelabError(
                    f"{word!r}: not a host or user name (it {SSH_NAME_RULE})",
                    "give an inventory name, ssh_config alias or user@host:port",
                    exit_code=CONNECTION_FAILED,
                )
        endpoint = Endpoint(name, user, port)
        return Target(name, endpoint, settings.remote.checkout, settings.remote.python)
    return Target(
        name,
        Endpoint(entry.host, entry.user, entry.port),
        entry.checkout or settings.remote.checkout,
        entry.python or settings.remote.python,
    )


def select(settings: Settings, hosts: str = "", tag: str = "", everything: bool = False) -> list[Target]:
    """The hosts a fleet task acts on: a comma list, an inventory tag, or the whole inventory."""
    if sum((bool(hosts), bool(tag), everything)) != 1:
        raise HomelabError("say which hosts", "give exactly one of --hosts a,b,c, --tag TAG or --all")
    if hosts:
        return [resolve(name.strip(), settings) for name in hosts.split(",") if name.strip()]
    names = [name for name, entry in settings.hosts.items() if everything or tag in entry.tags]
    if not names:
        what = f"tagged '{tag}'" if tag else "in the inventory"
        raise HomelabError(f"no hosts {what}", "add them under hosts: in invoke.yaml")
    return [resolve(name, settings) for name in names]


def open_connection(target: Target, config: Any, settings: Settings, timeout_s: float = 0) -> Any:
    """A host-key-checked fabric Connection to `target` (nothing is sent until the first command);
    `timeout_s` instead of remote.connect_timeout_s where a caller wants a quicker answer."""
    from tasks.core import ssh

    remote = settings.remote
    return ssh.connect(
        target.endpoint,
        config,
        remote.host_key_policy,
        remote.known_hosts,
        timeout_s or remote.connect_timeout_s,
    )


def shell_path(path: str) -> str:
    """A quoted path that still expands a leading ~ on the host."""
    if path == "~" or path.startswith("~/"):
        return "~/" + shlex.quote(path[2:]) if path[2:] else "~"
    return shlex.quote(path)


def invoke_command(target: Target, task_name: str, words: Iterable[str]) -> str:
    """`cd CHECKOUT && PYTHON -m invoke TASK WORDS...`, every piece quoted."""
    argv = " ".join(shlex.quote(word) for word in (task_name, *words))
    return f"cd {shell_path(target.checkout)} && {shell_path(target.python)} -m invoke {argv}"


def task_arguments(task: Any, values: Mapping[str, Any]) -> list[str]:
    """The `inv` words that reproduce a call of an invoke Task with `values` (arguments left at their
    defaults are left out, so the host's own config applies to them as it would here)."""
    words: list[str] = []
    for argument in task.get_arguments():
        value = values.get(argument.attr_name or argument.name)
        if value is None or value == argument.default:
            continue
        flag = f"--{argument.names[0]}"  # the dashed name invoke parses (`name` keeps underscores)
        if argument.kind is bool:
            words.append(flag if value else f"--no-{argument.names[0]}")
        elif argument.kind is list:
            words.extend(f"{flag}={item}" for item in value)
        elif argument.incrementable:
            words.extend([flag] * int(value))
        elif argument.optional and value is True:
            words.append(flag)
        else:
            words.append(f"{flag}={value}")
    return words


def at_terminal() -> bool:
    """A person is at our terminal: give the host a pty, as `ssh -t` would, for colours, Ctrl-C and
    prompts (sudo's password in bootstrap.sh, git's credentials)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def terminal_env(reserved: int = 0) -> dict[str, str]:
    """COLUMNS for the host's rich output: our terminal's width, less what we prefix to its lines."""
    return {"COLUMNS": str(max(40, shutil.get_terminal_size().columns - reserved))}


def execute(config: Any, settings: Settings, target: Target, command: str, **options: Any) -> Any:
    """Connect to `target`, `run_on` it, disconnect."""
    connection = open_connection(target, config, settings)
    try:
        return run_on(connection, target, command, **options)
    finally:
        connection.close()


def run_on(connection: Any, target: Target, command: str, **options: Any) -> Any:
    """Run `command` over `connection`, streaming its output; an invoke Result whatever the exit code.

    `options` go to fabric's run (`out_stream`, `hide`, `pty`, `env`, `in_stream=False` to keep our
    stdin to ourselves). Connection failures become a one-line HomelabError with ssh's exit code."""
    from tasks.core import ssh

    try:
        return connection.run(command, warn=True, **{"pty": False, **options})
    except Exception as exc:
        error = ssh.describe_failure(exc, target.name)
        if error is None:
            raise
        error.exit_code = CONNECTION_FAILED
        raise error from None


def repo_url(settings: Settings) -> str:
    """remote.repo_url, or where this checkout came from."""
    if settings.remote.repo_url:
        return settings.remote.repo_url
    found = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "remote", "get-url", "origin"], capture_output=True, text=True
    )
    if found.returncode != 0 or not found.stdout.strip():
        raise HomelabError("no repository to clone from", "set remote.repo_url in invoke.yaml")
    return found.stdout.strip()


def split_words(text: str) -> list[str]:
    """Task arguments typed as one string, split as a shell would (and quoted again on the way out)."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise HomelabError(f"cannot split the arguments {text!r}: {exc}", "balance the quotes") from None


def bootstrap_command(target: Target, url: str, install: bool) -> str:
    """Clone the project into the host's checkout (or fast-forward it) and, if asked, run bootstrap.sh."""
    checkout = shell_path(target.checkout)
    fetch = (
        f"if [ -d {checkout}/.git ]; then git -C {checkout} pull --ff-only; "
        f"else git clone -- {shlex.quote(url)} {checkout}; fi"
    )
    return f"{fetch} && {install_command(target)}" if install else fetch


def install_command(target: Target) -> str:
    """Run the checkout's bootstrap.sh: its virtualenv and packages, as that revision lists them."""
    return f"cd {shell_path(target.checkout)} && bash bootstrap.sh"


def sync_command(target: Target) -> str:
    """Fast-forward the host's checkout to its upstream, so catalog.yaml and invoke.yaml match."""
    checkout = shell_path(target.checkout)
    return f"git -C {checkout} pull --ff-only && git -C {checkout} log -1 --format='now at %h %s'"


# What fleet.deploy reads from a checkout before it moves it: one `key value` line each.
INSTALL_FILES = ("pyproject.toml", "bootstrap.sh")  # a change to either means running bootstrap.sh


def checkout_probe_command(target: Target, commit: str) -> str:
    """Fetch, then say the checkout's HEAD, whether it has uncommitted changes, whether `commit` is
    there and a fast-forward from HEAD, and which of INSTALL_FILES it changes."""
    git = f"git -C {shell_path(target.checkout)}"
    rev = shlex.quote(commit)
    files = " ".join(INSTALL_FILES)
    return (
        f"{git} fetch -q && echo head $({git} rev-parse HEAD)"
        f" && echo dirty $({git} status --porcelain --untracked-files=no | wc -l)"
        f" && if {git} cat-file -e {rev}^{{commit}} 2>/dev/null; then echo known 1;"
        f" echo ahead $({git} merge-base --is-ancestor HEAD {rev} && echo 1 || echo 0);"
        f" echo changed $({git} diff --name-only HEAD {rev} -- {files}); else echo known 0; fi"
    )


def move_checkout_command(target: Target, commit: str, forward: bool) -> str:
    """Fast-forward the checkout to `commit` (forward), or put its branch back on `commit` (a rollback;
    `reset --keep` refuses rather than lose a change made meanwhile)."""
    git = f"git -C {shell_path(target.checkout)}"
    move = "merge --ff-only -q" if forward else "reset --keep -q"
    return f"{git} {move} {shlex.quote(commit)} && {git} log -1 --format='now at %h %s'"


def sha256_command(target: Target, path: str) -> str:
    """The sha256 of a file on the host, by the checkout's own interpreter (no sha256sum on a Mac)."""
    code = "import hashlib,sys;print(hashlib.file_digest(open(sys.argv[1],'rb'),'sha256').hexdigest())"
    python = shell_path(target.python)
    return f"cd {shell_path(target.checkout)} && {python} -c {shlex.quote(code)} {shlex.quote(path)}"
