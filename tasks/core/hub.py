"""The hub side of models: file metadata, resumable downloads, remote checks, and one error table.

huggingface_hub 2.x restarts an interrupted download from zero. Here a download streams with HTTP
Range into the cache's `blobs/<etag>.incomplete`, checks the sha256 the hub published as the etag,
renames it into the blob and links the snapshot and ref exactly as huggingface_hub does, so its
cache API (`scan_cache_dir`, `hf_hub_download(local_files_only=True)`, deletes) sees a normal file.
Every call goes to `models.hub_endpoint` (the hub or a LAN mirror) with `models.hub_token`.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core import store
from tasks.core.catalog import CatalogEntry, describe_size
from tasks.core.config import ModelsSettings
from tasks.core.errors import HomelabError

SHA256 = re.compile(r"[0-9a-f]{64}")
COMMIT = re.compile(r"[0-9a-f]{40}")
SAFE_ETAG = re.compile(r"[\w.-]+")
CHUNK = 1 << 20


def token(models: ModelsSettings) -> str | None:
    """The configured token; None lets huggingface_hub use HF_TOKEN or `hf auth login`."""
    return models.hub_token or None


# --- errors -------------------------------------------------------------------------------------


def _error_table() -> list[tuple[type[BaseException], Callable[[Any], bool], str, str]]:
    """(exception, condition, problem, fix): first match wins, so subclasses come first."""
    import httpx2
    from huggingface_hub import errors as e

    always: Callable[[Any], bool] = lambda exc: True  # noqa: E731
    return [
        (e.OfflineModeIsEnabled, always, "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to reach the hub"),
        (
            e.GatedRepoError,
            always,
            "{repo} is gated and this token has no access",
            "accept its terms at {endpoint}/{repo}, then set models.hub_token (or HF_TOKEN)",
        ),
        (
            e.RepositoryNotFoundError,
            always,
            "repository {repo} not found on {endpoint} (or it is private)",
            "check 'repo' in catalog.yaml; for a private repo set models.hub_token",
        ),
        (
            e.RevisionNotFoundError,
            always,
            "revision '{revision}' not found in {repo}",
            "check --revision, or 'revision' in catalog.yaml",
        ),
        (
            e.RemoteEntryNotFoundError,
            always,
            "file '{file}' not found in {repo} at '{revision}'",
            "check 'files' in catalog.yaml or --file (`inv models.info NAME --remote` lists the repo)",
        ),
        (
            e.FileMetadataError,
            always,
            "{endpoint} does not answer like a Hugging Face hub",
            "set models.hub_endpoint to the hub or a mirror of it",
        ),
        (
            httpx2.ConnectError,
            always,
            "cannot reach {endpoint}",
            "check the network, or point models.hub_endpoint at a reachable mirror",
        ),
        (
            httpx2.TimeoutException,
            always,
            "{endpoint} did not answer in time",
            "try again, or point models.hub_endpoint at a closer mirror",
        ),
        (
            httpx2.TransportError,
            always,
            "the connection to {endpoint} dropped",
            "run the same command again: the download resumes where it stopped",
        ),
        (
            e.HfHubHTTPError,
            lambda exc: exc.response.status_code == 401,
            "{endpoint} rejected the token (HTTP 401)",
            "fix models.hub_token / HF_TOKEN, or `hf auth login` again",
        ),
        (
            e.HfHubHTTPError,
            always,
            "{endpoint} answered HTTP {status} for {repo}",
            "try again later; if it persists, check models.hub_endpoint",
        ),
        (
            OSError,
            lambda exc: exc.errno == errno.ENOSPC,
            "the disk filled up while writing {file}",
            "free some space and run again: the download resumes where it stopped",
        ),
    ]


def explain(exc: BaseException, **context: str) -> HomelabError | None:
    """The one-line message and fix for a hub failure, or None for an unexpected error."""
    response = getattr(exc, "response", None)
    fields = {"endpoint": "", "repo": "", "revision": "main", "file": "", **context}
    fields["status"] = str(getattr(response, "status_code", ""))
    for kind, applies, problem, fix in _error_table():
        if isinstance(exc, kind) and applies(exc):
            return HomelabError(problem.format(**fields), fix.format(**fields))
    return None


def unreachable(error: HomelabError) -> bool:
    """Whether a hub error means no answer at all (offline, refused, dropped) rather than a bad answer."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    # hub_errors raises `from None`, which keeps the library's exception as __context__
    return isinstance(error.__context__, httpx2.TransportError | OfflineModeIsEnabled)


@contextmanager
def hub_errors(endpoint: str, repo: str = "", revision: str = "", file: str = "") -> Iterator[None]:
    """Turn hub failures inside the block into one-line HomelabErrors."""
    try:
        yield
    except HomelabError:
        raise
    except Exception as exc:
        context = {"endpoint": endpoint, "repo": repo, "revision": revision or "main", "file": file}
        explained = explain(exc, **context)
        if explained is None:
            raise
        raise explained from None


# --- metadata -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """What the hub says about one file at one revision (from the same HEAD call hf_hub_download makes)."""

    repo: str
    filename: str
    revision: str
    commit: str
    etag: str
    size: int
    url: str


def resolve(repo: str, filename: str, revision: str, models: ModelsSettings) -> RemoteFile:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    endpoint = models.hub_endpoint
    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
    with hub_errors(endpoint, repo, revision, filename):
        meta = get_hf_file_metadata(url, token=token(models), endpoint=endpoint)
    commit, etag, size = meta.commit_hash or "", meta.etag or "", meta.size
    # the etag becomes a file name under blobs/, the commit a folder under snapshots/
    if size is None or not COMMIT.fullmatch(commit) or not SAFE_ETAG.fullmatch(etag):
        raise HomelabError(
            f"{endpoint} answered without a usable commit, etag or size for {repo}/{filename}",
            "set models.hub_endpoint to the hub or a mirror of it",
        )
    return RemoteFile(repo, filename, revision, commit, etag, size, meta.location)


@dataclass(frozen=True)
class RemoteEntry:
    name: str
    size: int
    sha256: str | None  # LFS files only


@dataclass(frozen=True)
class RemoteInfo:
    commit: str
    gated: bool
    files: dict[str, RemoteEntry]  # the entry's files and pattern matches that exist at `commit`

    def download_size(self, entry: CatalogEntry) -> int:
        """What `download NAME` would fetch, by the hub's sizes."""
        fetched = [*store.default_files(entry), *(n for n in self.files if n not in entry.files)]
        return sum(self.files[n].size for n in fetched if n in self.files)


def remote_info(entry: CatalogEntry, models: ModelsSettings, revision: str = "") -> RemoteInfo:
    """Commit, sizes and sha256 of an entry's files, as the hub reports them now."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=models.hub_endpoint, token=token(models))
    revision = revision or entry.revision or "main"
    with hub_errors(models.hub_endpoint, entry.repo, revision):
        info = api.model_info(entry.repo, revision=revision)
        names = list(entry.files) + [
            s.rfilename
            for s in info.siblings or []
            if any(fnmatch.fnmatch(s.rfilename, p) for p in entry.patterns)
        ]
        commit = info.sha or revision
        paths = api.get_paths_info(entry.repo, names, revision=commit)
    files = {
        p.path: RemoteEntry(p.path, p.size, p.lfs.sha256 if p.lfs else None)
        for p in paths
        if isinstance(p, RepoFile)
    }
    return RemoteInfo(commit, bool(info.gated), files)


@dataclass(frozen=True)
class EntryCheck:
    name: str
    commit: str
    hub_size: int
    problem: str  # "" when the entry matches the hub


def check_catalog(entries: list[CatalogEntry], models: ModelsSettings) -> list[EntryCheck]:
    """Each entry against the hub: repo and files exist, size_bytes within 10%, pinned sha256 equal.

    An unreachable hub stops the check at once: it says nothing about the entries.
    """
    checks = []
    for entry in entries:
        try:
            found = remote_info(entry, models)
        except HomelabError as exc:
            if unreachable(exc):
                raise
            checks.append(EntryCheck(entry.name, "", 0, exc.problem))
            continue
        size = found.download_size(entry)
        missing = [n for n in entry.files if n not in found.files]
        wrong_pins = [n for n, d in entry.sha256.items() if n in found.files and found.files[n].sha256 != d]
        if missing:
            problem = f"not on the hub: {', '.join(missing)}"
        elif wrong_pins:
            problem = f"sha256 pin differs from the hub: {', '.join(wrong_pins)}"
        elif abs(size - entry.size_bytes) > entry.size_bytes / 10:
            problem = f"size_bytes {describe_size(entry.size_bytes)}, hub {describe_size(size)}"
        else:
            problem = ""
        checks.append(EntryCheck(entry.name, found.commit, size, problem))
    return checks


# --- downloads ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilePlan:
    remote: RemoteFile
    have: int  # bytes already here: the whole file when cached, else the partial download's length
    cached: bool

    @property
    def to_fetch(self) -> int:
        return 0 if self.cached else self.remote.size - self.have


@dataclass(frozen=True)
class DownloadPlan:
    files: list[FilePlan]
    cache_dir: Path
    free: int
    margin: int

    @property
    def to_fetch(self) -> int:
        return sum(f.to_fetch for f in self.files)

    @property
    def fits(self) -> bool:
        return self.to_fetch == 0 or self.to_fetch + self.margin <= self.free


def plan_download(
    entry: CatalogEntry, models: ModelsSettings, file: str = "", quant: str = "", revision: str = ""
) -> DownloadPlan:
    """What a download would fetch: the entry's default files (or the one asked for), sizes, resume points."""
    revision = revision or entry.revision or "main"
    matched = _pattern_matches(entry, models, revision)
    if file or quant:
        names = [choose_file(entry, list(dict.fromkeys([*entry.files, *matched])), file, quant)]
    else:
        names = list(dict.fromkeys([*store.default_files(entry), *matched]))
    storage = store.repo_dir(models.cache_dir, entry.repo)
    plans = []
    for name in names:
        remote = resolve(entry.repo, name, revision, models)
        blob = storage / "blobs" / remote.etag
        partial = store.incomplete_path(blob)
        if blob.is_file():
            plans.append(FilePlan(remote, remote.size, cached=True))
        else:
            have = partial.stat().st_size if partial.is_file() else 0
            plans.append(FilePlan(remote, have if have <= remote.size else 0, cached=False))
    margin = models.free_space_margin_bytes
    return DownloadPlan(plans, models.cache_dir, store.free_bytes(models.cache_dir), margin)


def choose_file(entry: CatalogEntry, known: list[str], file: str = "", quant: str = "") -> str:
    """The one file `--file` (exact name) or `--quant` (tag in the name) picks among the entry's files.

    Only files the catalog lists (or its patterns match) can be picked: the catalog is what `list`,
    `verify` and `delete` know an entry by, so a file outside it would be fetched and then lost.
    """
    if file:
        asked, matches = f"--file {file}", [n for n in known if n == file]
    else:
        asked, matches = f"--quant {quant}", [n for n in known if quant.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    how_many = "more than one" if matches else "no"
    raise HomelabError(
        f"{entry.name}: {how_many} file of its catalog entry matches {asked}",
        f"choose one of: {', '.join(matches or known)} (or add the file to '{entry.name}' in catalog.yaml)",
    )


def _pattern_matches(entry: CatalogEntry, models: ModelsSettings, revision: str) -> list[str]:
    """The repo's files that the entry's patterns match at `revision` (no hub call without patterns)."""
    if not entry.patterns:
        return []
    from huggingface_hub import HfApi

    api = HfApi(endpoint=models.hub_endpoint, token=token(models))
    with hub_errors(models.hub_endpoint, entry.repo, revision):
        listed = api.list_repo_files(entry.repo, revision=revision)
    return [n for n in listed if any(fnmatch.fnmatch(n, p) for p in entry.patterns)]


def download(plan: DownloadPlan, models: ModelsSettings, progress: Any = None) -> list[Path]:
    """Fetch what the plan lists (resuming partial files) and return the snapshot paths; `progress`
    (rich's Progress interface) defaults to a progress bar on the terminal."""
    if not plan.fits:
        raise HomelabError(
            f"not enough disk space in {plan.cache_dir}: the download needs {describe_size(plan.to_fetch)}"
            f" and {describe_size(plan.margin)} must stay free, but only {describe_size(plan.free)} is free",
            "free some space, set models.cache_dir to a bigger disk, or lower models.free_space_margin_mb",
        )
    try:
        with progress or progress_bar() as shown:
            return [_fetch(f, models, shown) for f in plan.files]
    except KeyboardInterrupt:
        raise HomelabError(
            "download interrupted", "run the same command again: it resumes where it stopped", exit_code=130
        ) from None


def progress_bar() -> Any:
    """A rich progress bar for byte counts (downloads and hashing)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from tasks.core.console import console

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console(),
    )


class JsonProgress:
    """Progress as Ollama's pull objects (`status`, `digest`, `total`, `completed`), one JSON line
    each on stdout, for a program to relay (the server's /api/pull): the part of rich's Progress that
    downloads use, with a line per percent of a file rather than per chunk."""

    def __init__(self, plan: DownloadPlan) -> None:
        self._digests = {f.remote.filename: f.remote.etag for f in plan.files}
        self._files: list[dict[str, Any]] = []
        self._shown: list[int] = []

    def __enter__(self) -> JsonProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, description: str, total: int, completed: int = 0) -> int:
        etag = self._digests.get(description, "")
        digest = f"sha256:{etag}" if SHA256.fullmatch(etag) else etag
        self._files.append({"status": f"pulling {description}", "digest": digest, "total": total})
        self._shown.append(-1)
        self.update(len(self._files) - 1, completed=completed)
        return len(self._files) - 1

    def update(self, task: int, completed: int) -> None:
        self._files[task]["completed"] = completed
        self._emit(task)

    def advance(self, task: int, advance: int) -> None:
        self.update(task, self._files[task]["completed"] + advance)

    def _emit(self, task: int) -> None:
        import json

        from tasks.core.console import print_json

        file = self._files[task]
        percent = file["completed"] * 100 // max(1, file["total"])
        if percent != self._shown[task]:
            self._shown[task] = percent
            print_json(json.dumps(file))


def _fetch(plan: FilePlan, models: ModelsSettings, progress: Any) -> Path:
    from huggingface_hub.utils import WeakFileLock

    remote = plan.remote
    storage = store.repo_dir(models.cache_dir, remote.repo)
    blob = storage / "blobs" / remote.etag
    pointer = store.pointer_path(storage, remote.commit, remote.filename)
    blob.parent.mkdir(parents=True, exist_ok=True)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    store.record_ref(storage, remote.revision, remote.commit)
    lock = models.cache_dir / ".locks" / storage.name / f"{remote.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):  # the lock huggingface_hub takes for the same blob
        if not blob.is_file():
            store.record_partial(storage, remote.filename, remote.etag, remote.size)
            _stream_into_blob(remote, blob, models, progress)
        store.clear_partial(storage, remote.filename)
    if not pointer.is_file():
        pointer.unlink(missing_ok=True)  # a dangling link from a deleted blob
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    return pointer


def _stream_into_blob(remote: RemoteFile, blob: Path, models: ModelsSettings, progress: Any) -> None:
    """Append the missing bytes to `<blob>.incomplete` (HTTP Range), check them, rename into place."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    partial = store.incomplete_path(blob)
    have = partial.stat().st_size if partial.is_file() else 0
    if have > remote.size:
        partial.unlink()
        have = 0
    digest = hashlib.sha256() if SHA256.fullmatch(remote.etag) else None
    if digest is not None and have:
        store.hash_into(digest, partial)
    bar = progress.add_task(remote.filename, total=remote.size, completed=have)
    headers = build_hf_headers(token=token(models))
    headers["Accept-Encoding"] = "identity"
    if have:
        headers["Range"] = f"bytes={have}-"
    with hub_errors(models.hub_endpoint, remote.repo, remote.revision, remote.filename):
        if have < remote.size:
            with get_session().stream(
                "GET", remote.url, headers=headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
            ) as response:
                hf_raise_for_status(response)
                if have and response.status_code != 206:  # the server ignored Range: start over
                    have, digest = 0, hashlib.sha256() if digest is not None else None
                    progress.update(bar, completed=0)
                with partial.open("ab" if have else "wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                        if digest is not None:
                            digest.update(chunk)
                        progress.advance(bar, len(chunk))
    got = partial.stat().st_size
    if got != remote.size or (digest is not None and digest.hexdigest() != remote.etag):
        partial.unlink()
        raise HomelabError(
            f"{remote.filename}: the downloaded bytes do not match the hub's size or sha256"
            f" ({got} of {remote.size} B)",
            "run the download again (the damaged partial file was removed)",
        )
    os.replace(partial, blob)


# --- verify -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    file: str
    path: Path
    actual: str
    expected: str | None
    source: str  # where `expected` came from: bundled, hub, catalog, or "" when nothing is known

    @property
    def ok(self) -> bool:
        return self.expected is not None and self.actual == self.expected


def verify(entry: CatalogEntry, models: ModelsSettings) -> list[Check]:
    """sha256 of every installed file against the bundle's, the hub's LFS sha256, or the catalog's pin."""
    local = [f for f in store.local_files(entry, models) if f.state == "complete" and f.path is not None]
    if not local:
        raise HomelabError(f"{entry.name} is not installed", f"inv models.download {entry.name}")
    remote = _remote_hashes_if_reachable(entry, models, local)
    checks = []
    with progress_bar() as progress:
        for f in local:
            assert f.path is not None
            bar = progress.add_task(f"sha256 {f.name}", total=f.size)
            actual = store.sha256_of(f.path, functools.partial(progress.advance, bar))
            if f.source == "bundled" and entry.bundled is not None:
                checks.append(Check(f.name, f.path, actual, entry.bundled.sha256, "bundled"))
            elif f.name in remote:
                checks.append(Check(f.name, f.path, actual, remote[f.name], "hub"))
            else:
                pinned = entry.sha256.get(f.name)
                checks.append(Check(f.name, f.path, actual, pinned, "catalog" if pinned else ""))
    return checks


def _remote_hashes_if_reachable(
    entry: CatalogEntry, models: ModelsSettings, local: list[store.LocalFile]
) -> dict[str, str]:
    """The hub's LFS sha256 per file at the snapshot each file came from; {} when the hub is unreachable."""
    storage = store.repo_dir(models.cache_dir, entry.repo)
    commits = {
        f.name: f.path.relative_to(storage / "snapshots").parts[0]
        for f in local
        if f.source == "downloaded" and f.path is not None
    }
    hashes: dict[str, str] = {}
    for commit in sorted(set(commits.values())):
        try:
            info = remote_info(entry, models, revision=commit)
        except HomelabError as exc:
            if unreachable(exc):  # offline is not a failure here: the catalog's pins still apply
                return {}
            raise
        hashes.update({n: e.sha256 for n, e in info.files.items() if e.sha256 and commits.get(n) == commit})
    return hashes
