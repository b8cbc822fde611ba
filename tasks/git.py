"""Git: status, pulls and submodules of this checkout (or --repo PATH), with one-line errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from invoke import Context

from tasks._task import JSON_HELP, task

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractContextManager
    from pathlib import Path

    from tasks.core.git import Loss, Submodule

REPO_HELP = "the checkout to act on (default: this one, or git.repo in invoke.yaml)"
YES_HELP = "go ahead without asking (needed where there is no terminal, e.g. over fab)"
SUBMODULE_HELP = "submodule path as in .gitmodules, e.g. engines/a (default: every submodule)"


def _repo(c: Context, repo: str) -> Path:
    """--repo when given, else the configured checkout; resolved to the top of its work tree."""
    from pathlib import Path

    from tasks.core import config
    from tasks.core import git as core

    return core.open_repo(Path(repo) if repo else config.load(c.config).git.repo)


def _short(commit: str) -> str:
    return commit[:7] if commit else "-"


def _track(ahead: int, behind: int) -> str:
    counts = (("ahead", ahead), ("behind", behind))
    return ", ".join(f"{label} {n}" for label, n in counts if n) or "up to date"


def _dirty(changed: Sequence[str], untracked: Sequence[str]) -> str:
    counts = ((len(changed), "changed"), (len(untracked), "untracked"))
    return ", ".join(f"{n} {label}" for n, label in counts if n) or "clean"


def _submodule_line(module: Submodule) -> str:
    if module.tree is None:
        return f"  {module.path}  {_short(module.recorded)}  not initialized (inv git.submodule-update)"
    where = module.tree.branch or "detached"
    tracks = f", tracks {module.tracks}" if module.tracks else ""
    against = f"  {module.against}: {_track(module.ahead, module.behind)}" if module.against else ""
    moved = f"  moved from recorded {_short(module.recorded)}" if module.state == "moved" else ""
    dirty = _dirty(module.tree.changed, module.tree.untracked)
    return f"  {module.path}  {_short(module.tree.commit)}  {where}{tracks}{against}{moved}  {dirty}"


def _show_losses(losses: Sequence[Loss]) -> None:
    from tasks.core.console import print_table

    rows = [(loss.where, "uncommitted change", file) for loss in losses for file in loss.files]
    rows += [(loss.where, "commit", commit) for loss in losses for commit in loss.commits]
    print_table("Will be lost (untracked files are kept)", ["checkout", "what", "item"], rows)


def _confirm(action: str, yes: bool) -> None:
    from tasks.core.console import confirm
    from tasks.core.errors import HomelabError

    if not confirm(action, assume_yes=yes):
        raise HomelabError("cancelled; nothing was changed")


def _say(text: str) -> None:
    from tasks.core.console import say

    say(text, markup=False)  # git's output may hold brackets that are not markup


def _working(text: str) -> AbstractContextManager[Any]:
    """A spinner while git talks to remotes (silent when output is not a terminal)."""
    from tasks.core.console import console

    return console().status(text)


@task(aliases=["st"], help={"repo": REPO_HELP})
def status(c: Context, repo: str = "") -> None:
    """Show the branch, ahead/behind its upstream, uncommitted changes, and one line per submodule."""
    from tasks.core import git as core

    state = core.status(_repo(c, repo))
    tree = state.tree
    branch = f"{tree.branch} → {tree.upstream or 'no upstream'}" if tree.branch else "detached HEAD"
    track = "gone from the remote" if tree.upstream_gone else _track(tree.ahead, tree.behind)
    track = f": {track}" if tree.upstream else ""
    _say(f"{state.root}  {_short(tree.commit)}  {branch}{track}  {_dirty(tree.changed, tree.untracked)}")
    for module in state.submodules:
        _say(_submodule_line(module))


@task(help={"repo": REPO_HELP})
def pull(c: Context, repo: str = "") -> None:
    """Fast-forward the current branch to its upstream (never merges), then update submodules."""
    from tasks.core import git as core

    path = _repo(c, repo)
    with _working(f"Pulling {path}"):
        result = core.pull(path)
    if result.new_commits:
        moved = f"{_short(result.before)} → {_short(result.after)}"
        _say(f"{result.branch}: fast-forwarded {moved}, {result.new_commits} new from {result.upstream}")
    else:
        _say(f"{result.branch}: already up to date with {result.upstream}")
    _say("submodules: updated to the commits it records")


@task(help={"repo": REPO_HELP, "yes": YES_HELP, "json": JSON_HELP})
def sync(c: Context, repo: str = "", yes: bool = False, json: bool = False) -> None:
    """Hard-reset the branch and submodules to origin's: discards local work after showing it."""
    from tasks.core import git as core

    path = _repo(c, repo)
    with _working(f"Fetching {path}"):
        plan = core.sync_plan(path)
    if plan.losses:
        _show_losses(plan.losses)
        _confirm(f"reset {path} to {plan.upstream} and discard the above", yes)
    core.sync(path, plan)
    _say(f"{path}: reset to {plan.upstream} ({_short(plan.target)}); submodules at the commits it records")


@task(help={"repo": REPO_HELP, "json": JSON_HELP})
def submodules(c: Context, repo: str = "", json: bool = False) -> None:
    """Table of submodules: path, commit, branch, what it tracks, ahead/behind, dirty."""
    from tasks.core import git as core
    from tasks.core.console import print_table

    rows = [
        (
            m.path,
            _short(m.tree.commit if m.tree else m.recorded),
            (m.tree.branch or "detached") if m.tree else "",
            m.tracks or "(remote default)",
            f"{m.against}: {_track(m.ahead, m.behind)}" if m.against else "",
            _dirty(m.tree.changed, m.tree.untracked) if m.tree else "",
            m.state,
        )
        for m in core.submodules(_repo(c, repo))
    ]
    columns = ["path", "commit", "branch", "tracks", "ahead/behind", "dirty", "state"]
    print_table("Submodules", columns, rows)


@task(
    help={
        "submodule": "submodule path as in .gitmodules, e.g. engines/a",
        "branch": "branch to check out and record (created from origin/BRANCH if needed)",
        "repo": REPO_HELP,
    }
)
def submodule_branch(c: Context, submodule: str, branch: str, repo: str = "") -> None:
    """Switch a submodule to a branch and record that branch in .gitmodules."""
    from tasks.core import git as core

    path = _repo(c, repo)
    with _working(f"Switching {submodule} to {branch}"):
        module = core.submodule_branch(path, submodule, branch)
    _say(_submodule_line(module))
    _say(f".gitmodules now records branch {branch}: commit .gitmodules and {module.path} to share it")


@task(
    help={
        "submodule": SUBMODULE_HELP,
        "remote": "move to the tip of each submodule's tracked branch (fast-forward only), "
        "not to the commit this checkout records",
        "repo": REPO_HELP,
        "json": JSON_HELP,
    }
)
def submodule_update(
    c: Context, submodule: str = "", remote: bool = False, repo: str = "", json: bool = False
) -> None:
    """Initialize and update submodules to their recorded commits (or, with --remote, their branch tips)."""
    from tasks.core import git as core
    from tasks.core.console import print_table

    path = _repo(c, repo)
    with _working("Updating submodules"):
        moves = core.submodule_update(path, submodule, remote)
    rows = [
        (m.path, _short(m.before), _short(m.after), "moved" if m.before != m.after else "") for m in moves
    ]
    print_table("Submodules updated", ["path", "before", "after", "change"], rows)


@task(help={"submodule": SUBMODULE_HELP, "yes": YES_HELP, "repo": REPO_HELP, "json": JSON_HELP})
def submodule_reset(
    c: Context, submodule: str = "", yes: bool = False, repo: str = "", json: bool = False
) -> None:
    """Reset submodules to the commits this checkout records, discarding their local changes."""
    from tasks.core import git as core

    path = _repo(c, repo)
    losses = core.reset_plan(path, submodule)
    if losses:
        _show_losses(losses)
        _confirm("reset the submodules and discard the above", yes)
    for module in core.submodule_reset(path, submodule):
        _say(_submodule_line(module))


@task(help={"yes": YES_HELP, "repo": REPO_HELP})
def clean(c: Context, yes: bool = False, repo: str = "") -> None:
    """List untracked files and directories, and remove them once confirmed (ignored files are kept)."""
    from tasks.core import git as core

    path = _repo(c, repo)
    doomed = core.clean_plan(path)
    if not doomed:
        _say(f"{path}: nothing to clean")
        return
    _say(f"untracked in {path}:")
    for item in doomed:
        _say(f"  {item}")
    _confirm(f"remove these {len(doomed)} untracked paths", yes)
    removed = core.clean(path)
    _say(f"removed {len(removed)} untracked paths")


@task(help={"repo": REPO_HELP, "json": JSON_HELP})
def branches(c: Context, repo: str = "", json: bool = False) -> None:
    """Local and remote branches, each with its last commit and how it compares with its upstream."""
    from tasks.core import git as core
    from tasks.core.console import print_table

    rows = [
        (
            ("* " if b.current else "  ") + b.name,
            "remote" if b.remote else "local",
            b.commit,
            b.date,
            b.subject,
            f"{b.upstream} ({b.track or 'up to date'})" if b.upstream else "",
        )
        for b in core.branches(_repo(c, repo))
    ]
    print_table("Branches", ["branch", "kind", "commit", "date", "subject", "upstream"], rows)


@task(
    help={
        "n": "how many commits (default: git.log_count in invoke.yaml)",
        "repo": REPO_HELP,
        "json": JSON_HELP,
    }
)
def log(c: Context, n: int = 0, repo: str = "", json: bool = False) -> None:
    """The latest commits: hash, date, author, refs, subject."""
    from tasks.core import config
    from tasks.core import git as core
    from tasks.core.console import print_table

    count = n or config.load(c.config).git.log_count
    rows = [(e.commit, e.date, e.author, e.refs, e.subject) for e in core.log(_repo(c, repo), count)]
    print_table(f"Last {count} commits", ["commit", "date", "author", "refs", "subject"], rows)
