"""models.copy: an installed entry's files from one host's huggingface_hub cache into others', over SFTP.

A file arrives as `blobs/<blob>.incomplete` beside the `.partial/<file>` marker a download writes, so an
interrupted copy shows as partial in `models.ls` there and the next copy continues it from its size.
Its sha256 is computed on the receiving host before it is renamed into place and linked from
`snapshots/<commit>/<file>`, as huggingface_hub links a download: then `models.ls` there lists it and
the server there loads it. With `--from HOST` the bytes pass through this machine (read over one SFTP
session, written over another), never stored here.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from tasks.core import remote, store
from tasks.core.catalog import CatalogEntry, describe_size
from tasks.core.config import Settings
from tasks.core.errors import HomelabError
from tasks.core.hub import SHA256
from tasks.core.remote import Target

CHUNK = 1 << 20
LAYOUT_TASK = "models.info"


@dataclass(frozen=True)
class Copied:
    """How one file went to one host."""

    host: str
    file: str
    result: str  # copied | resumed at N | already there | CORRUPT: removed | failed
    sent: int  # bytes sent this time
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class _Source:
    """Where the files come from: their layout and a way to open one for reading from an offset."""

    where: str
    layout: store.CacheLayout
    open: Callable[[str, int], Any]


def copy_entry(
    config: Any,
    settings: Settings,
    entry: CatalogEntry,
    origin: Target | None,
    destinations: Sequence[Target],
    progress: Any,
) -> list[Copied]:
    """Copy the complete files `origin` (None: this machine) has of `entry` to each destination in
    turn; a host that already has a file complete is skipped, an unreachable one is a failed row."""
    with _source(config, settings, entry, origin) as source:
        files = [f for f in source.layout.files if f.state == "complete"]
        if not files:
            raise HomelabError(
                f"{entry.name} is not installed on {source.where}",
                f"download it there first (inv models.download {entry.name})",
            )
        expected = {f.name: _expected_sha256(entry, f, source) for f in files}
        results: list[Copied] = []
        for target in destinations:
            results += _copy_to(config, settings, entry, target, source, files, expected, progress)
        return results


@contextlib.contextmanager
def _source(config: Any, settings: Settings, entry: CatalogEntry, origin: Target | None) -> Iterator[_Source]:
    if origin is None:
        yield _Source("this machine", store.cache_layout(entry, settings.models), _open_here)
        return
    connection = remote.open_connection(origin, config, settings)
    try:
        layout = remote_layout(connection, origin, entry.name)
        sftp = open_sftp(connection, origin)
        yield _Source(origin.name, layout, lambda path, offset: _open_remote(sftp, path, offset))
    finally:
        connection.close()


def open_sftp(connection: Any, target: Target) -> Any:
    """The connection's SFTP session; a host whose sshd offers none is one line, not a traceback."""
    from paramiko.ssh_exception import SSHException

    try:
        return connection.sftp()
    except SSHException as exc:
        raise HomelabError(
            f"{target.name}: no SFTP session ({exc})",
            "enable it in sshd_config: Subsystem sftp internal-sftp",
        ) from None


def _open_here(path: str, offset: int) -> IO[bytes]:
    handle = open(path, "rb")  # noqa: SIM115 (the caller's `with` closes it)
    handle.seek(offset)
    return handle


def _open_remote(sftp: Any, path: str, offset: int) -> Any:
    """A file on the source host, read ahead in parallel requests (one at a time crawls)."""
    handle = sftp.open(path, "rb")
    handle.seek(offset)
    handle.prefetch()
    return handle


def remote_layout(connection: Any, target: Target, name: str) -> store.CacheLayout:
    """The host's view of an entry's files (`inv models.info NAME --json` in its checkout)."""
    command = remote.invoke_command(target, LAYOUT_TASK, [name, "--json"])
    result = remote.run_on(connection, target, command, hide=True, in_stream=False)
    lines = result.stdout.strip().splitlines()
    if result.exited or not lines:
        said = (result.stderr.strip().splitlines() or [f"{LAYOUT_TASK} exited {result.exited}"])[-1]
        raise HomelabError(f"{target.name}: {said}", "update its checkout (inv remote.sync HOST)")
    try:
        return store.cache_layout_from_json(lines[-1])
    except (ValueError, KeyError, TypeError):
        raise HomelabError(
            f"{target.name}: no cache layout from {LAYOUT_TASK} --json", "update its checkout (remote.sync)"
        ) from None


def _source_path(layout: store.CacheLayout, file: store.CachedFile) -> str:
    return posixpath.join(layout.repo_dir, "snapshots", file.commit, file.name)


def _expected_sha256(entry: CatalogEntry, file: store.CachedFile, source: _Source) -> str:
    """The catalog's pin, else the blob's name when it is one (the hub names LFS blobs by their
    sha256, and a download checked it), else the source file's own hash."""
    if pinned := entry.sha256.get(file.name):
        return pinned
    if SHA256.fullmatch(file.blob):
        return file.blob
    import hashlib

    digest = hashlib.sha256()
    with source.open(_source_path(source.layout, file), 0) as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_to(
    config: Any,
    settings: Settings,
    entry: CatalogEntry,
    target: Target,
    source: _Source,
    files: list[store.CachedFile],
    expected: dict[str, str],
    progress: Any,
) -> list[Copied]:
    started = time.monotonic()
    connection = remote.open_connection(target, config, settings)
    try:
        theirs = remote_layout(connection, target, entry.name)
        complete = {f.name for f in theirs.files if f.state == "complete"}
        sending = [f for f in files if f.name not in complete]
        _check_room(target, theirs, sending)
        sftp = open_sftp(connection, target)
        results = [
            Copied(target.name, f.name, "already there", 0, 0.0, True) for f in files if f.name in complete
        ]
        for file in sending:
            send = _Send(connection, sftp, target, theirs.repo_dir, file, expected[file.name])
            results.append(send.run(source, progress))
        return results
    except HomelabError as exc:
        return [Copied(target.name, "", "failed", 0, time.monotonic() - started, False, exc.message)]
    except OSError as exc:  # what SFTP says of a path there: no space, no permission
        detail = f"{target.name}: {exc.strerror or exc}"
        return [Copied(target.name, "", "failed", 0, time.monotonic() - started, False, detail)]
    finally:
        connection.close()


def _check_room(target: Target, theirs: store.CacheLayout, sending: list[store.CachedFile]) -> None:
    """Refuse before the first byte a copy that the host's disk cannot hold (its partials count)."""
    partial = {f.name: f.size for f in theirs.files if f.state == "partial"}
    needed = sum(f.size - partial.get(f.name, 0) for f in sending)
    if theirs.room is not None and needed > theirs.room:
        raise HomelabError(
            f"{target.name}: not enough disk space: the copy needs {describe_size(needed)}, and only "
            f"{describe_size(max(0, theirs.room))} is free beyond its models.free_space_margin_mb",
            "free some space there or lower that margin",
        )


@dataclass
class _Send:
    """One file to one host: append to its partial blob, hash it there, rename and link it."""

    connection: Any
    sftp: Any
    target: Target
    repo_dir: str
    file: store.CachedFile
    sha256: str

    @property
    def blob(self) -> str:
        return posixpath.join(self.repo_dir, "blobs", self.file.blob or self.sha256)

    def run(self, source: _Source, progress: Any) -> Copied:
        started = time.monotonic()
        partial = self.blob + ".incomplete"
        marker = posixpath.join(self.repo_dir, ".partial", self.file.name)
        for folder in (posixpath.dirname(partial), posixpath.dirname(marker)):
            self._makedirs(folder)
        self._write(marker, f"{posixpath.basename(self.blob)} {self.file.size}\n")  # as a download's
        have = max(0, self._size(partial))
        if have > self.file.size:  # not a prefix of this file: start again
            self.sftp.remove(partial)
            have = 0
        bar = progress.add_task(f"{self.target.name}: {self.file.name}", total=self.file.size, completed=have)
        with source.open(_source_path(source.layout, self.file), have) as reading:
            self._append(reading, partial, have, lambda n: progress.advance(bar, n))
        sent, seconds = self.file.size - have, time.monotonic() - started
        arrived = self._sha256(partial)
        if arrived != self.sha256:
            self.sftp.remove(partial)
            self.sftp.remove(marker)
            detail = f"sha256 {arrived[:16]}… on arrival, not {self.sha256[:16]}…: the copy was removed"
            return Copied(self.target.name, self.file.name, "CORRUPT: removed", sent, seconds, False, detail)
        self._install(partial)
        self.sftp.remove(marker)
        result = f"resumed at {have} B" if have else "copied"
        return Copied(self.target.name, self.file.name, result, sent, seconds, True)

    def _append(self, reading: IO[bytes], partial: str, have: int, advance: Callable[[int], Any]) -> None:
        with self.sftp.open(partial, "ab" if have else "wb") as out:
            out.set_pipelined(True)
            while chunk := reading.read(CHUNK):
                out.write(chunk)
                advance(len(chunk))

    def _sha256(self, path: str) -> str:
        command = remote.sha256_command(self.target, path)
        result = remote.run_on(self.connection, self.target, command, hide=True, in_stream=False)
        if result.exited:
            raise HomelabError(
                f"{self.target.name}: cannot hash {path}: {result.stderr.strip()}",
                "check remote.python for this host",
            )
        return str(result.stdout.strip())

    def _install(self, partial: str) -> None:
        """Rename the checked blob into place and link it from the snapshot, as huggingface_hub does."""
        self.sftp.posix_rename(partial, self.blob)
        pointer = posixpath.join(self.repo_dir, "snapshots", self.file.commit, self.file.name)
        self._makedirs(posixpath.dirname(pointer))
        with contextlib.suppress(OSError):  # a dangling link from a deleted blob
            self.sftp.remove(pointer)
        self.sftp.symlink(posixpath.relpath(self.blob, posixpath.dirname(pointer)), pointer)

    def _size(self, path: str) -> int:
        """The bytes at `path`, -1 when nothing is there."""
        try:
            return int(self.sftp.stat(path).st_size or 0)
        except OSError:
            return -1

    def _makedirs(self, folder: str) -> None:
        missing = []
        while folder not in ("", "/") and self._size(folder) < 0:
            missing.append(folder)
            folder = posixpath.dirname(folder)
        for path in reversed(missing):
            self.sftp.mkdir(path)

    def _write(self, path: str, text: str) -> None:
        temp = f"{path}.tmp"
        with self.sftp.open(temp, "wb") as out:
            out.write(text.encode())
        self.sftp.posix_rename(temp, path)
