"""The `task` decorator every namespace uses: invoke's, plus one-line errors instead of tracebacks,
delegation to the host's own checkout when run by `fab -H host` (see tasks/_remote.py), and a task's
`json` argument switching the tables it prints to JSON (tasks/core/console.py)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from invoke import Task
from invoke import task as invoke_task
from invoke.exceptions import Exit

from tasks import _remote
from tasks.core.console import tables_as_json
from tasks.core.errors import HomelabError


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """HomelabError, a path the system refuses, and Ctrl-C become invoke's Exit: one line on stderr and
    an exit code."""
    try:
        yield
    except HomelabError as exc:
        raise Exit(f"error: {exc.message}", code=exc.exit_code) from None
    except OSError as exc:
        if exc.filename is None:  # not about a path: a bug or a network error, keep its traceback
            raise
        fix = "check that path and the invoke.yaml setting that names it"
        raise Exit(f"error: {exc.filename}: {exc.strerror} — {fix}", code=1) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None


JSON_HELP = "print each table as one line of JSON (messages go to stderr)"
SAMPLING_HELP = {  # server.chat and models.run: the same flags, resolved by ServerConfig.sampling
    "max_tokens": "cap on the answer's length (default: server.chat_max_tokens; 0 there = no cap)",
    "temperature": "sampling temperature, 0 = greedy (default: server.chat_temperature)",
}


def _guarded(body: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(body)
    def run(c: Any, *args: Any, **kwargs: Any) -> Any:
        with one_line_errors():
            if _remote.is_connection(c):
                return _remote.delegate(c, run, body, args, kwargs)
            with tables_as_json(kwargs.get("json") is True):  # every table-printing task has --json
                return body(c, *args, **kwargs)

    return run


def check_env_overrides() -> None:
    """Refuse a bad INVOKE_* override (FABRIC_* under fab) while the collection loads.

    invoke reads these variables after loading the collection and before any task runs, outside any
    task, and ends in a traceback on a value it cannot cast; importing the collection is the last
    point where our code runs before that, under plain `inv` and `fab` alike.
    """
    prefix = "FABRIC_" if "fabric.main" in sys.modules else "INVOKE_"
    if not any(name.startswith(prefix) for name in os.environ):
        return
    from tasks.core import config_file

    with one_line_errors():
        config_file.check_env_overrides(prefix, os.environ)


def task(*args: Any, **kwargs: Any) -> Any:
    """`invoke.task` with the same signature; HomelabError becomes `Exit(message, code)`."""
    if len(args) == 1 and callable(args[0]) and not isinstance(args[0], Task) and not kwargs:
        return invoke_task(_guarded(args[0]))

    def decorate(body: Callable[..., Any]) -> Task:
        return invoke_task(*args, **kwargs)(_guarded(body))

    return decorate
