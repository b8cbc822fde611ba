"""The git namespace through the real `inv git.X --repo ...` command line, on real repositories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.gitrepos import GitWorld, commit, git

ROOT = Path(__file__).resolve().parents[2]


def inv(*args: str) -> subprocess.CompletedProcess[str]:
    """Run an inv task as a user would, with no terminal on stdin (so nothing can wait for an answer)."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(*args: str) -> str:
    result = inv(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(*args: str) -> str:
    """The one-line error of a task that must fail."""
    result = inv(*args)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], result.stderr
    return lines[0]


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD")


def diverge(world: GitWorld) -> str:
    """A local commit in the clone and another on origin, fetched: main is 1 ahead and 1 behind."""
    commit(world.clone, {"local.txt": "mine\n"}, "local work")
    world.push_commit("app", "main", {"remote.txt": "theirs\n"}, "remote work")
    git(world.clone, "fetch", "-q")
    return head(world.clone)


def test_status_shows_ahead_behind_dirty_and_one_line_per_submodule(git_world: GitWorld) -> None:
    diverge(git_world)
    (git_world.clone / "config.txt").write_text("edited\n")
    (git_world.clone / "notes.txt").write_text("new\n")
    git(git_world.clone / "engines/a", "checkout", "-q", "dev")

    out = ok("git.status", "--repo", str(git_world.clone))

    top, *submodule_lines = out.strip().splitlines()
    assert "main → origin/main: ahead 1, behind 1" in top
    assert "1 changed, 1 untracked" in top
    assert [line.split()[0] for line in submodule_lines] == ["engines/a", "engines/b"]
    assert " dev " in submodule_lines[0] and "moved from recorded" in submodule_lines[0]
    assert "detached" in submodule_lines[1] and "origin/main: up to date" in submodule_lines[1]


def test_pull_fast_forwards_and_moves_submodules_to_the_new_records(git_world: GitWorld) -> None:
    engine_commit = git_world.push_commit("engine-a", "main", {"engine.txt": "a v2\n"}, "engine-a: v2")
    project_commit = git_world.push_submodule_move("engines/a", engine_commit)

    out = ok("git.pull", "--repo", str(git_world.clone))

    assert "fast-forwarded" in out and "1 new from origin/main" in out
    assert head(git_world.clone) == project_commit
    assert head(git_world.clone / "engines/a") == engine_commit


def test_pull_stops_at_a_submodule_whose_local_changes_are_in_the_way(git_world: GitWorld) -> None:
    engine_commit = git_world.push_commit("engine-a", "main", {"engine.txt": "a v2\n"}, "engine-a: v2")
    git_world.push_submodule_move("engines/a", engine_commit)
    (git_world.clone / "engines/a/engine.txt").write_text("my local edit\n")

    error = refused("git.pull", "--repo", str(git_world.clone))

    assert "local changes in submodule engines/a" in error
    assert "inv git.submodule-reset --submodule engines/a" in error
    assert (git_world.clone / "engines/a/engine.txt").read_text() == "my local edit\n"


def test_pull_refuses_a_diverged_branch_and_keeps_local_commits(git_world: GitWorld) -> None:
    local = diverge(git_world)

    error = refused("git.pull", "--repo", str(git_world.clone))

    assert "diverged" in error and "inv git.sync" in error
    assert head(git_world.clone) == local


def test_pull_on_a_detached_head_says_to_check_out_a_branch(git_world: GitWorld) -> None:
    git(git_world.clone, "checkout", "-q", "--detach")

    assert "detached HEAD" in refused("git.pull", "--repo", str(git_world.clone))


def test_pull_without_upstream_says_how_to_set_one(git_world: GitWorld) -> None:
    git(git_world.clone, "checkout", "-q", "-b", "experiment")

    error = refused("git.pull", "--repo", str(git_world.clone))

    assert "branch experiment" in error and "--set-upstream-to=origin/experiment" in error


def test_sync_without_yes_and_without_terminal_refuses_and_destroys_nothing(git_world: GitWorld) -> None:
    local = diverge(git_world)
    (git_world.clone / "config.txt").write_text("edited\n")

    result = inv("git.sync", "--repo", str(git_world.clone))

    assert result.returncode == 1
    assert "config.txt" in result.stdout and "local work" in result.stdout  # what would be lost
    assert "not confirmed" in result.stderr and "--yes" in result.stderr
    assert head(git_world.clone) == local
    assert (git_world.clone / "config.txt").read_text() == "edited\n"


def test_sync_with_yes_resets_branch_and_submodules_but_keeps_untracked_files(git_world: GitWorld) -> None:
    diverge(git_world)
    (git_world.clone / "config.txt").write_text("edited\n")
    (git_world.clone / "notes.txt").write_text("keep me\n")
    recorded = head(git_world.clone / "engines/a")
    git(git_world.clone / "engines/a", "checkout", "-q", "dev")

    out = ok("git.sync", "--yes", "--repo", str(git_world.clone))

    assert "reset to origin/main" in out
    assert head(git_world.clone) == git(git_world.clone, "rev-parse", "origin/main")
    assert (git_world.clone / "config.txt").read_text() == "v1\n"
    assert (git_world.clone / "notes.txt").exists()
    assert head(git_world.clone / "engines/a") == recorded


def test_submodules_table_shows_each_submodule(git_world: GitWorld) -> None:
    git(git_world.clone / "engines/b", "checkout", "-q", "cuda")

    rows = {
        line.split("│")[1].strip(): line
        for line in ok("git.submodules", "--repo", str(git_world.clone)).splitlines()
        if "│ engines/" in line
    }

    assert set(rows) == {"engines/a", "engines/b"}
    assert head(git_world.clone / "engines/a")[:7] in rows["engines/a"]
    assert "detached" in rows["engines/a"] and "ok" in rows["engines/a"]
    assert (
        "cuda" in rows["engines/b"]
        and "origin/cuda: up to date" in rows["engines/b"]
        and "moved" in rows["engines/b"]
    )


def test_submodules_through_a_pipe_keep_whole_paths_and_json_parses(git_world: GitWorld) -> None:
    """Two long paths with a common start were both `reference/…` in an 80-column pipe."""
    long_paths = [f"reference/ml-explore/examples-with-a-rather-long-name-{x}" for x in "ab"]
    for path, origin in zip(long_paths, ["engine-a", "engine-b"], strict=True):
        git(git_world.clone, "submodule", "add", "-q", str(git_world.origin(origin)), path)
    git(git_world.clone, "commit", "-q", "-m", "add reference checkouts")
    piped = {**os.environ, "COLUMNS": "80"}  # what a pipe gets from a terminal of that width
    command = [sys.executable, "-m", "invoke", "git.submodules", "--repo", str(git_world.clone)]

    table = subprocess.run(command, cwd=ROOT, env=piped, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    paths = [line.split("│")[1].strip() for line in table.stdout.splitlines() if line.startswith("│")]
    assert paths == ["engines/a", "engines/b", *long_paths]

    as_json = subprocess.run([*command, "--json"], cwd=ROOT, env=piped, capture_output=True, text=True)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)["rows"]
    assert [row["path"] for row in rows] == ["engines/a", "engines/b", *long_paths]
    assert rows[0]["commit"] == head(git_world.clone / "engines/a")[:7] and rows[0]["state"] == "ok"


def test_submodule_branch_checks_out_the_branch_and_records_it_in_gitmodules(git_world: GitWorld) -> None:
    sub = git_world.clone / "engines/a"

    ok("git.submodule-branch", "--submodule", "engines/a", "--branch", "dev", "--repo", str(git_world.clone))

    assert git(git_world.clone, "config", "--file", ".gitmodules", "submodule.engines/a.branch") == "dev"
    assert git(sub, "branch", "--show-current") == "dev"
    assert git(sub, "rev-parse", "--abbrev-ref", "@{upstream}") == "origin/dev"


def test_submodule_branch_to_a_missing_branch_changes_nothing(git_world: GitWorld) -> None:
    gitmodules = (git_world.clone / ".gitmodules").read_text()

    error = refused("git.submodule-branch", "-s", "engines/a", "-b", "nope", "--repo", str(git_world.clone))

    assert "no branch nope" in error and "inv git.branches" in error
    assert (git_world.clone / ".gitmodules").read_text() == gitmodules


def test_submodule_branch_blocked_by_local_files_says_what_to_do(git_world: GitWorld) -> None:
    (git_world.clone / "engines/a/dev.txt").write_text("mine, untracked\n")

    error = refused("git.submodule-branch", "-s", "engines/a", "-b", "dev", "--repo", str(git_world.clone))

    assert "local changes" in error and "stash" in error
    assert (git_world.clone / "engines/a/dev.txt").read_text() == "mine, untracked\n"


def test_unknown_submodule_is_named_with_the_real_ones(git_world: GitWorld) -> None:
    error = refused("git.submodule-update", "--submodule", "engines/zz", "--repo", str(git_world.clone))

    assert "no submodule 'engines/zz'" in error and "engines/a, engines/b" in error


def test_submodule_update_remote_picks_up_new_commits_on_tracked_branches(git_world: GitWorld) -> None:
    clone = git_world.clone
    ok("git.submodule-branch", "-s", "engines/a", "-b", "dev", "--repo", str(clone))
    on_dev = git_world.push_commit("engine-a", "dev", {"dev.txt": "a dev v2\n"}, "engine-a: dev v2")
    on_main = git_world.push_commit("engine-b", "main", {"engine.txt": "b v2\n"}, "engine-b: v2")

    out = ok("git.submodule-update", "--remote", "--repo", str(clone))

    assert on_dev[:7] in out and on_main[:7] in out
    assert head(clone / "engines/a") == on_dev
    assert git(clone / "engines/a", "branch", "--show-current") == "dev"  # still on its branch
    assert head(clone / "engines/b") == on_main


def test_submodule_update_brings_back_recorded_commits_and_initializes(git_world: GitWorld) -> None:
    clone = git_world.clone
    recorded = head(clone / "engines/a")
    git(clone / "engines/a", "checkout", "-q", "metal")
    git(clone, "submodule", "deinit", "-q", "engines/b")

    ok("git.submodule-update", "--repo", str(clone))

    assert head(clone / "engines/a") == recorded
    assert (clone / "engines/b/engine.txt").read_text() == "b main\n"


def test_submodule_reset_shows_losses_and_refuses_without_yes(git_world: GitWorld) -> None:
    sub = git_world.clone / "engines/a"
    (sub / "engine.txt").write_text("scratch edit\n")
    detached = commit(sub, {"wip.txt": "wip\n"}, "engine-a: detached experiment")

    result = inv("git.submodule-reset", "--repo", str(git_world.clone))

    assert result.returncode == 1 and "--yes" in result.stderr
    assert "engine.txt" in result.stdout and "detached experiment" in result.stdout
    assert head(sub) == detached and (sub / "engine.txt").read_text() == "scratch edit\n"


def test_submodule_reset_with_yes_returns_one_submodule_to_its_recorded_commit(git_world: GitWorld) -> None:
    clone = git_world.clone
    recorded = {path: head(clone / path) for path in ("engines/a", "engines/b")}
    (clone / "engines/a/engine.txt").write_text("scratch edit\n")
    commit(clone / "engines/a", {"wip.txt": "wip\n"}, "engine-a: wip")
    git(clone / "engines/b", "checkout", "-q", "cuda")

    ok("git.submodule-reset", "--submodule", "engines/a", "--yes", "--repo", str(clone))

    assert head(clone / "engines/a") == recorded["engines/a"]
    assert (clone / "engines/a/engine.txt").read_text() == "a main\n"
    assert head(clone / "engines/b") != recorded["engines/b"]  # the other submodule is untouched


def test_clean_lists_untracked_paths_and_removes_them_only_with_yes(git_world: GitWorld) -> None:
    clone = git_world.clone
    (clone / "scratch.txt").write_text("x\n")
    (clone / "build").mkdir()
    (clone / "build/out.o").write_text("x\n")
    (clone / ".git/info/exclude").write_text("*.log\n")
    (clone / "server.log").write_text("ignored\n")

    dry = inv("git.clean", "--repo", str(clone))

    assert dry.returncode == 1 and "--yes" in dry.stderr
    assert "scratch.txt" in dry.stdout and "build/" in dry.stdout and "server.log" not in dry.stdout
    assert (clone / "scratch.txt").exists() and (clone / "build/out.o").exists()

    assert "removed 2 untracked paths" in ok("git.clean", "--yes", "--repo", str(clone))
    assert not (clone / "scratch.txt").exists() and not (clone / "build").exists()
    assert (clone / "server.log").exists()  # ignored files are kept
    assert "nothing to clean" in ok("git.clean", "--repo", str(clone))


def test_branches_lists_local_and_remote_branches_with_their_last_commit(git_world: GitWorld) -> None:
    out = ok("git.branches", "--repo", str(git_world.clone / "engines/a"))

    remote_rows = [line for line in out.splitlines() if "│ remote" in line]
    assert [row.split("│")[1].strip() for row in remote_rows] == ["origin/dev", "origin/main", "origin/metal"]
    assert any("origin/metal" in row and "engine-a: metal" in row for row in remote_rows)
    assert "origin/HEAD" not in out


def test_log_shows_the_latest_n_commits(git_world: GitWorld) -> None:
    out = ok("git.log", "-n", "2", "--repo", str(git_world.clone))

    assert "app: config" in out and "app: add engines" in out
    assert "app: first commit" not in out


def test_log_without_n_shows_the_configured_count(git_world: GitWorld) -> None:
    out = ok("git.log", "--repo", str(git_world.clone))

    assert "Last 10 commits" in out and "app: first commit" in out  # git.log_count in invoke.yaml


def test_not_a_repository_is_a_one_line_error_with_the_fix(tmp_path: Path) -> None:
    error = refused("git.status", "--repo", str(tmp_path))

    assert f"{tmp_path} is not a git repository" in error and "--repo" in error


@pytest.mark.parametrize(("answer", "code"), [("n\n", 1), ("y\n", 0)])
def test_sync_at_a_terminal_asks_and_follows_the_answer(git_world: GitWorld, answer: str, code: int) -> None:
    local = diverge(git_world)
    controller, terminal = os.openpty()
    with os.fdopen(controller, "w") as keyboard:
        keyboard.write(answer)
        keyboard.flush()
        result = subprocess.run(
            [sys.executable, "-m", "invoke", "git.sync", "--repo", str(git_world.clone)],
            cwd=ROOT,
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    os.close(terminal)

    assert result.returncode == code, result.stderr
    assert "? [y/N]" in result.stdout
    assert (head(git_world.clone) == local) == (answer == "n\n")
