"""The `task` decorator every namespace uses: invoke's, plus one-line errors instead of tracebacks, and
delegation to the host's own checkout when run by `fab -H host` (see tasks/_remote.py)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from invoke import Task
from invoke import task as invoke_task
from invoke.exceptions import Exit

from tasks import _remote
from tasks.core.errors import HomelabError


def _guarded(body: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(body)
    def run(c: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if _remote.is_connection(c):
                return _remote.delegate(c, run, body, args, kwargs)
            return body(c, *args, **kwargs)
        except HomelabError as exc:
            raise Exit(f"error: {exc.message}", code=exc.exit_code) from None
        except KeyboardInterrupt:
            raise Exit("interrupted", code=130) from None

    return run


def task(*args: Any, **kwargs: Any) -> Any:
    """`invoke.task` with the same signature; HomelabError becomes `Exit(message, code)`."""
    if len(args) == 1 and callable(args[0]) and not isinstance(args[0], Task) and not kwargs:
        return invoke_task(_guarded(args[0]))

    def decorate(body: Callable[..., Any]) -> Task:
        return invoke_task(*args, **kwargs)(_guarded(body))

    return decorate
