"""tasks.core.git on real repositories: porcelain parsing, loss plans, and git's failures as one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.core import git as core
from tasks.core.errors import HomelabError
from tests.fixtures.gitrepos import GitWorld, commit, git


def test_worktree_reads_renames_staged_files_and_paths_with_spaces(git_world: GitWorld) -> None:
    clone = git_world.clone
    (clone / "conf dir").mkdir()
    git(clone, "mv", "config.txt", "conf dir/config v2.txt")
    (clone / "README.md").write_text("changed\n")
    (clone / "new notes.txt").write_text("x\n")

    tree = core.worktree(clone)

    assert tree.branch == "main" and tree.upstream == "origin/main"
    assert set(tree.changed) == {"conf dir/config v2.txt", "README.md"}
    assert tree.untracked == ("new notes.txt",)


def test_status_tells_uninitialized_and_moved_submodules_apart(git_world: GitWorld) -> None:
    clone = git_world.clone
    git(clone / "engines/a", "checkout", "-q", "metal")
    git(clone, "submodule", "deinit", "-q", "engines/b")

    state = {m.path: m for m in core.status(clone).submodules}

    assert state["engines/a"].state == "moved" and state["engines/a"].tree is not None
    assert state["engines/a"].against == "origin/metal"
    assert state["engines/b"].state == "not initialized" and state["engines/b"].tree is None
    assert core.status(clone).tree.changed == ()  # submodule moves are reported per submodule


def test_sync_plan_counts_only_work_that_no_ref_keeps(git_world: GitWorld) -> None:
    clone = git_world.clone
    commit(clone, {"local.txt": "mine\n"}, "local work")
    (clone / "config.txt").write_text("edited\n")
    commit(clone / "engines/a", {"wip.txt": "wip\n"}, "a: detached wip")  # lost: no branch has it
    git(clone / "engines/b", "checkout", "-q", "-b", "keep")
    commit(clone / "engines/b", {"kept.txt": "kept\n"}, "b: on a branch")  # kept by branch 'keep'

    plan = core.sync_plan(clone)

    losses = {loss.where: loss for loss in plan.losses}
    assert set(losses) == {".", "engines/a"}
    assert losses["."].files == ("config.txt",)
    assert [c.split(" ", 1)[1] for c in losses["."].commits] == ["local work"]
    assert [c.split(" ", 1)[1] for c in losses["engines/a"].commits] == ["a: detached wip"]
    assert plan.upstream == "origin/main" and plan.target == git(clone, "rev-parse", "origin/main")


def test_an_upstream_deleted_on_the_remote_is_reported_not_counted(git_world: GitWorld) -> None:
    clone = git_world.clone
    git(clone, "checkout", "-q", "-b", "feature")
    git(clone, "push", "-q", "-u", "origin", "feature")
    git(git_world.root / "scratch/app", "push", "-q", "origin", ":feature")
    git(clone, "fetch", "-q", "--prune")

    tree = core.worktree(clone)

    assert tree.upstream == "origin/feature" and tree.upstream_gone
    with pytest.raises(HomelabError, match="no longer exists on the remote"):
        core.pull(clone)


def test_pull_when_up_to_date_reports_no_new_commits(git_world: GitWorld) -> None:
    result = core.pull(git_world.clone)

    assert result.new_commits == 0 and result.before == result.after


def test_pull_blocked_by_uncommitted_changes_keeps_them(git_world: GitWorld) -> None:
    git_world.push_commit("app", "main", {"config.txt": "v2\n"}, "app: config v2")
    (git_world.clone / "config.txt").write_text("my edit\n")

    with pytest.raises(HomelabError, match=r"local changes in .* would be overwritten by the merge"):
        core.pull(git_world.clone)

    assert (git_world.clone / "config.txt").read_text() == "my edit\n"


def test_a_project_without_submodules_has_none(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")
    commit(tmp_path, {".gitmodules": "", "README.md": "x\n"}, "first")

    assert core.submodules(tmp_path) == []


def test_a_gitmodules_entry_without_a_recorded_commit_is_no_submodule(git_world: GitWorld) -> None:
    git(git_world.clone, "config", "--file", ".gitmodules", "submodule.engines/c.path", "engines/c")

    assert [m.path for m in core.submodules(git_world.clone)] == ["engines/a", "engines/b"]
    with pytest.raises(HomelabError, match=r"no submodule 'engines/c' .*\(it has: engines/a, engines/b\)"):
        core.submodule_update(git_world.clone, "engines/c")


def test_remote_update_refuses_to_drop_commits_of_a_diverged_submodule(git_world: GitWorld) -> None:
    clone = git_world.clone
    core.submodule_branch(clone, "engines/a", "dev")
    mine = commit(clone / "engines/a", {"mine.txt": "mine\n"}, "a: my change on dev")
    git_world.push_commit("engine-a", "dev", {"theirs.txt": "theirs\n"}, "a: their change on dev")

    with pytest.raises(HomelabError, match=r"submodule engines/a has commits .* \(diverged\)") as error:
        core.submodule_update(clone, "engines/a", remote=True)

    assert "inv git.submodule-reset --submodule engines/a" in error.value.fix
    assert git(clone / "engines/a", "rev-parse", "HEAD") == mine


def test_submodule_branch_reuses_an_existing_local_branch(git_world: GitWorld) -> None:
    sub = git_world.clone / "engines/a"
    git(sub, "branch", "metal", "origin/main")  # a local 'metal' that differs from origin/metal

    module = core.submodule_branch(git_world.clone, "engines/a", "metal")

    assert module.tree is not None and module.tree.branch == "metal"
    assert module.tree.commit == git(sub, "rev-parse", "origin/main")
    assert module.tracks == "metal"


@pytest.mark.parametrize("branch", ["--force", "two words", "bad..name"])
def test_submodule_branch_rejects_names_that_are_not_branches(git_world: GitWorld, branch: str) -> None:
    with pytest.raises(HomelabError, match="not a valid branch name"):
        core.submodule_branch(git_world.clone, "engines/a", branch)


def test_users_without_protocol_file_allow_get_the_fix_in_one_line(
    git_world: GitWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = git_world.clone
    git(clone, "submodule", "deinit", "-q", "engines/b")
    shutil.rmtree(clone / ".git/modules/engines/b")
    monkeypatch.delenv("GIT_CONFIG_COUNT")  # the setting only the tests pass

    with pytest.raises(HomelabError, match=r"protocol\.file\.allow"):
        core.submodule_update(clone, "engines/b")


def test_log_of_a_repository_without_commits_says_so(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "-b", "main")

    with pytest.raises(HomelabError, match="has no commits yet"):
        core.log(tmp_path, 5)


def test_log_needs_a_positive_count(git_world: GitWorld) -> None:
    with pytest.raises(HomelabError, match="pass -n 1 or more"):
        core.log(git_world.clone, 0)


def test_open_repo_finds_the_top_of_the_checkout(git_world: GitWorld) -> None:
    assert core.open_repo(git_world.clone / "engines") == git_world.clone
    with pytest.raises(HomelabError, match="no such directory"):
        core.open_repo(git_world.root / "missing")
