"""Git through its CLI: parsed porcelain output in, typed results out, git's failures as one-line errors.

Every command is an argument list (never a shell string) run with `git -C REPO`. Destructive
operations come in two steps: a `*_plan` function that says what would be lost, and the operation,
so the task can show the loss and ask before anything is touched.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.core.errors import HomelabError

# git's own default remote name: what `git clone` creates and `submodule update --remote` falls back to.
DEFAULT_REMOTE = "origin"

# git's stderr -> (problem, fix). Searched in order; the first match wins. Templates may use the
# pattern's named groups and {repo} (the repository the failing command ran in).
GIT_ERRORS: tuple[tuple[str, str, str], ...] = (
    (
        r"not a git repository",
        "{repo} is not a git repository",
        "run the task inside a checkout, or pass --repo PATH",
    ),
    (
        r"HEAD does not point to a branch",
        "{repo} is on a detached HEAD (no branch to follow)",
        "check out a branch first: git -C {repo} switch BRANCH",
    ),
    (
        r"no upstream configured for branch '(?P<branch>[^']+)'",
        "branch {branch} of {repo} has no upstream",
        "set one: git -C {repo} branch --set-upstream-to={remote}/{branch}",
    ),
    (
        r"ambiguous argument '@\{upstream\}'",
        "the upstream of {repo}'s branch no longer exists on the remote",
        "point it at another: git -C {repo} branch --set-upstream-to={remote}/BRANCH",
    ),
    (
        r"does not have any commits yet",
        "{repo} has no commits yet",
        "make a first commit, or pass --repo another checkout",
    ),
    (
        r"Unable to merge '\w+' in submodule path '(?P<path>[^']+)'",
        "submodule {path} has commits that are not on its tracked branch (diverged)",
        "merge or rebase them in {path}, or discard them: inv git.submodule-reset --submodule {path}",
    ),
    (
        r"Unable to checkout '\w+' in submodule path '(?P<path>[^']+)'",
        "local changes in submodule {path} are in the way",
        "commit or stash them in {path}, or discard them: inv git.submodule-reset --submodule {path}",
    ),
    (
        r"Not possible to fast-forward",
        "{repo} has local commits that are not on its upstream (diverged)",
        "merge or rebase them yourself (git -C {repo} pull --rebase), or discard them: inv git.sync",
    ),
    (
        r"would be overwritten by (?P<operation>\w+)",
        "local changes in {repo} would be overwritten by the {operation}",
        "commit or stash them first (git -C {repo} stash)",
    ),
    (
        r"'(?P<ref>[^']+)' is not a commit and a branch '(?P<branch>[^']+)' cannot be created",
        "no branch {branch} in {repo} or on its remote ({ref} does not exist)",
        "pick an existing one: inv git.branches --repo {repo}",
    ),
    (
        r"transport 'file' not allowed",
        "git refuses local file:// submodule URLs (protocol.file.allow)",
        "if you trust them: git config --global protocol.file.allow always",
    ),
    (
        r"Could not read from remote repository|unable to access|does not appear to be a git repository",
        "cannot reach the remote of {repo}",
        "check its URL (git -C {repo} remote -v), the network and your credentials",
    ),
)


def _error_for(repo: Path, command: Sequence[str], stderr: str) -> HomelabError:
    """The table's one-line error for git's stderr, or git's own last complaint when no pattern fits."""
    for pattern, problem, fix in GIT_ERRORS:
        match = re.search(pattern, stderr)
        if match:
            fields = {"repo": str(repo), "remote": DEFAULT_REMOTE, **match.groupdict()}
            return HomelabError(problem.format(**fields), fix.format(**fields))
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said = next((line for line in reversed(lines) if line.startswith(("fatal:", "error:"))), "")
    said = said or (lines[-1] if lines else "no message")
    rerun = shlex.join(["git", "-C", str(repo), *command])
    return HomelabError(f"git {command[0]} failed in {repo}: {said}", f"run it yourself for details: {rerun}")


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "core.quotepath=off", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )


def _git(repo: Path, *args: str) -> str:
    """git's stdout for a command that must succeed; a failure becomes a one-line HomelabError."""
    result = _run(repo, *args)
    if result.returncode != 0:
        raise _error_for(repo, args, result.stderr)
    return result.stdout


def _succeeds(repo: Path, *args: str) -> bool:
    return _run(repo, *args).returncode == 0


def open_repo(path: Path) -> Path:
    """The top of the checkout that contains `path`."""
    if not path.is_dir():
        raise HomelabError(f"{path}: no such directory", "pass --repo the path of an existing checkout")
    return Path(_git(path, "rev-parse", "--show-toplevel").strip())


def commit_of(repo: Path, rev: str) -> str:
    """The full commit id that `rev` (a branch, tag or short id) names in `repo`."""
    found = _run(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
    if found.returncode != 0:
        raise HomelabError(f"'{rev}' names no commit in {repo}", f"see git -C {repo} log --oneline")
    return found.stdout.strip()


# --- state ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkTree:
    """One checkout's `git status --porcelain=v2 --branch`: where HEAD is and what is uncommitted."""

    commit: str
    branch: str  # "" when HEAD is detached
    upstream: str  # "" when the branch has none
    upstream_gone: bool  # configured, but deleted on the remote (ahead/behind then mean nothing)
    ahead: int
    behind: int
    changed: tuple[str, ...]  # staged or modified tracked files (submodule entries excluded)
    untracked: tuple[str, ...]

    @property
    def dirty(self) -> bool:
        return bool(self.changed or self.untracked)


def worktree(repo: Path) -> WorkTree:
    fields = _git(repo, "status", "--porcelain=v2", "--branch", "-z").split("\0")
    header: dict[str, str] = {}
    changed: list[str] = []
    untracked: list[str] = []
    entries = iter(fields)
    for entry in filter(None, entries):
        kind = entry[:1]
        if entry.startswith("# "):
            key, _, value = entry[2:].partition(" ")
            header[key] = value
        elif kind == "?":
            untracked.append(entry[2:])
        elif kind in ("1", "2", "u"):
            parts = entry.split(" ", {"1": 8, "2": 9, "u": 10}[kind])
            if kind == "2":
                next(entries)  # the rename's original path
            if not parts[2].startswith("S"):  # submodules report their own state
                changed.append(parts[-1])
    ahead, behind = re.findall(r"\d+", header.get("branch.ab", "+0 -0"))
    head = header.get("branch.head", "")
    return WorkTree(
        commit=header.get("branch.oid", ""),
        branch="" if head == "(detached)" else head,
        upstream=header.get("branch.upstream", ""),
        upstream_gone="branch.upstream" in header and "branch.ab" not in header,
        ahead=int(ahead),
        behind=int(behind),
        changed=tuple(changed),
        untracked=tuple(untracked),
    )


@dataclass(frozen=True)
class Submodule:
    name: str
    path: str  # relative to the superproject
    recorded: str  # the commit the superproject records
    tracks: str  # branch recorded in .gitmodules ("" = the remote's default branch)
    tree: WorkTree | None  # None when not initialized
    against: str  # the remote branch ahead/behind are counted against ("" when unknown)
    ahead: int
    behind: int

    @property
    def state(self) -> str:
        if self.tree is None:
            return "not initialized"
        return "ok" if self.tree.commit == self.recorded else "moved"


def _gitmodules(repo: Path) -> dict[str, dict[str, str]]:
    """.gitmodules as name -> {path, url, branch, ...}."""
    if not (repo / ".gitmodules").is_file():
        return {}
    args = ("config", "--file", ".gitmodules", "--null", "--get-regexp", r"^submodule\.")
    result = _run(repo, *args)
    if result.returncode not in (0, 1):  # 1: no submodule entries
        raise _error_for(repo, args, result.stderr)
    modules: dict[str, dict[str, str]] = {}
    for item in filter(None, result.stdout.split("\0")):
        key, _, value = item.partition("\n")
        name, _, field = key.removeprefix("submodule.").rpartition(".")
        modules.setdefault(name, {})[field] = value
    return modules


def _recorded_commits(repo: Path) -> dict[str, str]:
    """path -> the commit the index records for each submodule (gitlink, mode 160000)."""
    recorded = {}
    for item in filter(None, _git(repo, "ls-files", "--stage", "-z").split("\0")):
        meta, _, path = item.partition("\t")
        mode, sha, _stage = meta.split()
        if mode == "160000":
            recorded[path] = sha
    return recorded


def _compare_with_remote(checkout: Path, branch: str) -> tuple[str, int, int]:
    """(remote branch, ahead, behind) of a detached HEAD against `branch` on the default remote.

    An empty `branch` means the remote's default branch (origin/HEAD), as `submodule update
    --remote` does; ("", 0, 0) when that remote branch is not known here.
    """
    named = _run(checkout, "rev-parse", "--abbrev-ref", f"refs/remotes/{DEFAULT_REMOTE}/{branch or 'HEAD'}")
    if named.returncode != 0:
        return "", 0, 0
    remote_branch = named.stdout.strip()
    counts = _git(checkout, "rev-list", "--left-right", "--count", f"HEAD...{remote_branch}", "--")
    ahead, behind = counts.split()
    return remote_branch, int(ahead), int(behind)


def submodules(repo: Path) -> list[Submodule]:
    recorded = _recorded_commits(repo)
    found = []
    for name, fields in _gitmodules(repo).items():
        path = fields.get("path", name)
        if path not in recorded:  # a .gitmodules entry without a commit recorded is no submodule to git
            continue
        tracks = fields.get("branch", "")
        checkout = repo / path
        tree = worktree(checkout) if (checkout / ".git").exists() else None
        against, ahead, behind = "", 0, 0
        if tree is not None and tree.upstream and not tree.upstream_gone:
            against, ahead, behind = tree.upstream, tree.ahead, tree.behind
        elif tree is not None:
            against, ahead, behind = _compare_with_remote(checkout, tracks)
        found.append(Submodule(name, path, recorded[path], tracks, tree, against, ahead, behind))
    return found


@dataclass(frozen=True)
class RepoStatus:
    root: Path
    tree: WorkTree
    submodules: list[Submodule]


def status(repo: Path) -> RepoStatus:
    return RepoStatus(repo, worktree(repo), submodules(repo))


def find_submodule(repo: Path, path: str) -> Submodule:
    """The submodule at `path` (or named `path`); a one-line error listing the real ones otherwise."""
    wanted = path.strip().rstrip("/")
    known = submodules(repo)
    for module in known:
        if wanted in (module.path, module.name):
            return module
    names = ", ".join(m.path for m in known) or "none"
    raise HomelabError(
        f"no submodule {path!r} in {repo} (it has: {names})", "pick one of those: inv git.submodules"
    )


# --- what destructive operations would lose ----------------------------------------------------------


@dataclass(frozen=True)
class Loss:
    """What one checkout would lose: uncommitted files and commits no branch or remote keeps."""

    where: str
    files: tuple[str, ...]
    commits: tuple[str, ...]  # one line each: short hash and subject


def _commits_not_in(checkout: Path, *kept: str) -> tuple[str, ...]:
    """Commits of HEAD that none of `kept` (revisions or --branches style options) contains."""
    return tuple(_git(checkout, "log", "--format=%h %s", "HEAD", "--not", *kept).splitlines())


def _submodule_losses(repo: Path, modules: Sequence[Submodule]) -> list[Loss]:
    losses = []
    for module in modules:
        if module.tree is None:
            continue
        # A submodule's HEAD becomes the recorded commit; commits that no ref keeps are lost.
        kept = ("--branches", "--tags", "--remotes", module.recorded)
        stray = _commits_not_in(repo / module.path, *kept)
        if module.tree.changed or stray:
            losses.append(Loss(module.path, module.tree.changed, stray))
    return losses


def _update_submodules(
    repo: Path, paths: Sequence[str] = (), *, remote: bool = False, force: bool = False
) -> None:
    """Submodules to the recorded commits (or their tracked branch's tip with `remote`), recursively.

    With `remote`, a submodule is fast-forwarded (merge mode with merge.ff=only): a submodule on a
    branch stays on it, and local commits are never dropped; divergence is an error instead.
    """
    _git(repo, "submodule", "sync", "--quiet", "--recursive", "--", *paths)
    config = ["-c", "merge.ff=only"] if remote else []
    options = ["--remote", "--merge"] if remote else []
    options += ["--force"] if force else []
    _git(repo, *config, "submodule", "update", "--init", "--recursive", *options, "--", *paths)


# --- pull and sync -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pull:
    branch: str
    upstream: str
    before: str
    after: str
    new_commits: int


def _upstream(repo: Path) -> str:
    """The current branch's upstream (e.g. origin/main); one-line errors when detached or missing."""
    return _git(repo, "rev-parse", "--abbrev-ref", "@{upstream}").strip()


def pull(repo: Path) -> Pull:
    """Fast-forward the current branch to its upstream, then bring submodules to what it records."""
    upstream = _upstream(repo)
    _git(repo, "fetch", "--quiet")
    before = worktree(repo)
    _git(repo, "merge", "--ff-only", "--quiet", "@{upstream}")
    after = worktree(repo)
    _update_submodules(repo)
    new = int(_git(repo, "rev-list", "--count", f"{before.commit}..{after.commit}"))
    return Pull(after.branch, upstream, before.commit, after.commit, new)


@dataclass(frozen=True)
class SyncPlan:
    upstream: str
    target: str  # the upstream's commit, fixed when planned
    losses: list[Loss]


def sync_plan(repo: Path) -> SyncPlan:
    """Fetch, then say what a hard reset to the upstream (submodules included) would discard."""
    upstream = _upstream(repo)
    _git(repo, "fetch", "--quiet")
    target = _git(repo, "rev-parse", "@{upstream}").strip()
    tree = worktree(repo)
    stray = _commits_not_in(repo, target)  # the branch's own commits: the reset drops them
    losses = [Loss(".", tree.changed, stray)] if tree.changed or stray else []
    return SyncPlan(upstream, target, losses + _submodule_losses(repo, submodules(repo)))


def sync(repo: Path, plan: SyncPlan) -> WorkTree:
    _git(repo, "reset", "--hard", "--quiet", plan.target)
    _update_submodules(repo, force=True)
    return worktree(repo)


# --- submodules --------------------------------------------------------------------------------------


def submodule_branch(repo: Path, path: str, branch: str) -> Submodule:
    """Check `branch` out in the submodule (tracking the remote's), then record it in .gitmodules."""
    if branch.startswith("-") or not _succeeds(repo, "check-ref-format", "--branch", branch):
        raise HomelabError(f"{branch!r} is not a valid branch name", "pass an existing branch's name")
    module = find_submodule(repo, path)
    if module.tree is None:
        _update_submodules(repo, [module.path])
    checkout = repo / module.path
    _git(checkout, "fetch", "--quiet", DEFAULT_REMOTE)
    if _succeeds(checkout, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"):
        _git(checkout, "checkout", "--quiet", branch, "--")
    else:
        _git(checkout, "checkout", "--quiet", "-b", branch, "--track", f"{DEFAULT_REMOTE}/{branch}")
    _git(repo, "submodule", "set-branch", "--branch", branch, "--", module.path)
    return find_submodule(repo, module.path)


@dataclass(frozen=True)
class Moved:
    path: str
    before: str
    after: str


def submodule_update(repo: Path, path: str = "", remote: bool = False) -> list[Moved]:
    """Submodules to their recorded commits, or with `remote` to their tracked branch's tip."""
    paths = [find_submodule(repo, path).path] if path else []
    before = {m.path: m.tree.commit if m.tree else "" for m in submodules(repo)}
    _update_submodules(repo, paths, remote=remote)
    after = submodules(repo)
    return [
        Moved(m.path, before.get(m.path, ""), m.tree.commit if m.tree else "")
        for m in after
        if not paths or m.path in paths
    ]


def reset_plan(repo: Path, path: str = "") -> list[Loss]:
    """What resetting submodules (one, or all) to their recorded commits would discard."""
    modules = [find_submodule(repo, path)] if path else submodules(repo)
    return _submodule_losses(repo, modules)


def submodule_reset(repo: Path, path: str = "") -> list[Submodule]:
    paths = [find_submodule(repo, path).path] if path else []
    _update_submodules(repo, paths, force=True)
    return [m for m in submodules(repo) if not paths or m.path in paths]


# --- clean, branches, log ----------------------------------------------------------------------------


def _clean(repo: Path, *mode: str) -> list[str]:
    out = _git(repo, "clean", "-d", *mode)
    return [re.sub(r"^(Would remove|Removing) ", "", line) for line in out.splitlines()]


def clean_plan(repo: Path) -> list[str]:
    """Untracked files and directories `clean` would remove (ignored files are kept)."""
    return _clean(repo, "--dry-run")


def clean(repo: Path) -> list[str]:
    return _clean(repo, "--force")


@dataclass(frozen=True)
class Branch:
    name: str
    remote: bool
    current: bool
    commit: str
    date: str
    subject: str
    upstream: str
    track: str  # e.g. "ahead 1, behind 2"; "gone" when the upstream was deleted


_BRANCH_FORMAT = "%00".join(
    (
        "%(HEAD)",
        "%(refname)",
        "%(refname:short)",
        "%(objectname:short)",
        "%(committerdate:short)",
        "%(subject)",
        "%(upstream:short)",
        "%(upstream:track,nobracket)",
        "%(symref)",
    )
)


def branches(repo: Path) -> list[Branch]:
    """Local branches, then remote-tracking ones, each with its last commit."""
    out = _git(repo, "for-each-ref", f"--format={_BRANCH_FORMAT}", "refs/heads", "refs/remotes")
    found = []
    for line in out.splitlines():
        head, ref, name, commit, date, subject, upstream, track, symref = line.split("\0")
        if symref:  # origin/HEAD: an alias, not a branch
            continue
        remote = ref.startswith("refs/remotes/")
        found.append(Branch(name, remote, head == "*", commit, date, subject, upstream, track))
    return found


@dataclass(frozen=True)
class Commit:
    commit: str
    date: str
    author: str
    refs: str
    subject: str


def log(repo: Path, count: int) -> list[Commit]:
    if count < 1:
        raise HomelabError(f"cannot show {count} commits", "pass -n 1 or more")
    out = _git(repo, "log", f"--max-count={count}", "--date=short", "--format=%h%x00%ad%x00%an%x00%D%x00%s")
    return [Commit(*line.split("\0")) for line in out.splitlines()]
