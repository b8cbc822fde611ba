"""Writing a file whole or not at all: the one way tasks replace a file's contents."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

PRIVATE = 0o600  # owner only: for files that may hold a key


@contextlib.contextmanager
def atomic_output(path: Path, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary handle whose bytes replace `path` when the block ends without an error: a fresh temp
    file beside it, then a rename, so readers see the old file or the new one, never half of it. An
    error (or a check the block fails and raises for) removes the temp file and leaves `path` alone.

    The temp file is created new (O_EXCL) with `mode` (less the umask) and never widened afterwards, and
    a symlink planted at its name is refused (O_NOFOLLOW) rather than written through. A symlink at
    `path` itself is kept: its target is replaced, not the link.
    """
    target = path.resolve() if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_atomically(path: Path, text: str, mode: int = 0o666) -> None:
    """Replace `path` with `text` (see atomic_output)."""
    with atomic_output(path, mode) as handle:
        handle.write(text.encode())
