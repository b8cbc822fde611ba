"""How a task runs on a fabric Connection (`fab -H host TASK`): the same `inv TASK` in the host's checkout.

Downloads and the server are Python work that cannot run in-process over SSH, so every task delegates
instead: the `task` decorator calls `delegate` when its context is a Connection, and task bodies never
branch on local or remote.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from invoke import Collection
from invoke.exceptions import Exit


def is_connection(c: Any) -> bool:
    """True for a fabric Connection; cheap when fabric was never imported (plain `inv`)."""
    module = sys.modules.get("fabric.connection")
    return module is not None and isinstance(c, module.Connection)


def delegate(c: Any, wrapper: Callable[..., Any], body: Callable[..., Any], args: Any, kwargs: Any) -> None:
    """Run the task whose Task body is `wrapper` on `c`'s host with the same arguments, output streamed
    back; a non-zero remote exit code becomes ours."""
    from tasks import ns
    from tasks.core import config, remote

    settings = config.load(c.config)
    name = dotted_name(ns, wrapper)
    values = inspect.signature(body).bind(c, *args, **kwargs).arguments
    words = remote.task_arguments(ns[name], values)
    # fab has parsed user@host:port and read ~/.ssh/config for a plain host; an inventory name is ours
    target = remote.resolve(c.original_host, settings, c.user, c.port)
    command = remote.invoke_command(target, name, words)
    pty = remote.at_terminal()
    exit_like(remote.execute(c.config, settings, target, command, pty=pty, env=remote.terminal_env()))


def exit_like(result: Any) -> None:
    """A host's non-zero exit code becomes ours (its own output has already said why)."""
    if result.exited:
        raise Exit(code=result.exited)


def dotted_name(collection: Collection, body: Callable[..., Any]) -> str:
    """The name a task is invoked by (`models.info`), found by its body in the collection tree."""
    found = _find(collection, body, "")
    if found is None:
        raise LookupError(f"{body.__qualname__} is not a task of the collection")
    return found


def _find(collection: Collection, body: Callable[..., Any], prefix: str) -> str | None:
    for name, task in collection.tasks.items():
        if task.body is body:
            return prefix + name
    for name, sub in collection.collections.items():
        found = _find(sub, body, f"{prefix}{name}.")
        if found:
            return found
    return None
