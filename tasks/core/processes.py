"""Whether a process recorded in a pidfile or lock is still there."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while `pid` runs (also when it belongs to another user); a child of ours that has exited
    is reaped, so it does not linger as a zombie that still answers signal 0."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
