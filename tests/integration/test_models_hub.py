"""`inv models.*` end to end: the real huggingface_hub client against the test hub (tests/fixtures/hub.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core import config
from tests.fixtures.hub import GRANTED_TOKEN, MB, HubServer, ModelsCli, Olah, dead_endpoint

TINY = "test-org/tiny-GGUF"


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The task's error line; also checks the failure was clean (non-zero, no traceback)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _row(table: str, name: str) -> list[str]:
    """The cells of a rich table's row whose first cell is `name`."""
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if line.startswith("│")]
    return next(r for r in rows if r[0] == name)


def test_download_list_info_verify_delete_round_trip(models_cli: ModelsCli, hub: HubServer) -> None:
    from huggingface_hub import hf_hub_download, scan_cache_dir

    result = models_cli("models.download", "tiny")
    assert result.returncode == 0, result.stderr
    assert hub.served[f"{TINY}/tiny-Q4_K_M.gguf"] == 3 * MB
    assert hub.served[f"{TINY}/tiny-Q8_0.gguf"] == 0  # a GGUF entry fetches its first quant only

    # huggingface_hub's own cache API sees an ordinary cached file
    cached = hf_hub_download(TINY, "tiny-Q4_K_M.gguf", cache_dir=models_cli.cache_dir, local_files_only=True)
    assert Path(cached).read_bytes() == hub.repos[TINY].files["tiny-Q4_K_M.gguf"].data.read_bytes()
    info = scan_cache_dir(models_cli.cache_dir)
    assert not info.warnings and not info.incomplete_files
    (repo,) = info.repos
    assert {r.commit_hash for r in repo.revisions} == {hub.repos[TINY].commit}
    assert {ref for r in repo.revisions for ref in r.refs} == {"main"}

    listed = models_cli("models.ls")
    assert "tiny-Q4_K_M.gguf" in listed.stdout and "complete" in listed.stdout
    assert _row(models_cli("models.catalog").stdout, "tiny")[3] == "yes"
    assert _row(models_cli("models.disk-usage").stdout, "tiny") == ["tiny", "downloaded", "3.0 MB"]

    shown = models_cli("models.info", "tiny", "--remote")
    assert shown.returncode == 0, shown.stderr
    assert str(models_cli.cache_dir) in shown.stdout and hub.repos[TINY].commit in shown.stdout
    assert hub.repos[TINY].files["tiny-Q8_0.gguf"].sha256 in shown.stdout

    checked = models_cli("models.verify", "tiny")
    assert checked.returncode == 0, checked.stderr
    assert "hub" in checked.stdout and "ok" in checked.stdout

    again = models_cli("models.download", "tiny")
    assert again.returncode == 0 and hub.served[f"{TINY}/tiny-Q4_K_M.gguf"] == 3 * MB  # nothing refetched

    refused = models_cli("models.rm", "tiny", stdin="y\n")  # no terminal to ask: refused, kept
    assert "(no terminal to ask) — re-run with --yes" in _one_line_error(refused)
    deleted = models_cli("models.rm", "tiny", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert "freed 3.0 MB" in deleted.stdout
    assert not any(r.repo_id == TINY for r in scan_cache_dir(models_cli.cache_dir).repos)
    assert "tiny-Q4_K_M.gguf" not in models_cli("models.ls").stdout


@pytest.mark.parametrize("choice", [("--quant", "q8_0"), ("--file", "tiny-Q8_0.gguf")])
def test_quant_or_file_and_revision_pick_what_is_fetched(
    models_cli: ModelsCli, hub: HubServer, choice: tuple[str, str]
) -> None:
    commit = hub.repos[TINY].commit
    result = models_cli("models.download", "tiny", *choice, "--revision", commit)
    assert result.returncode == 0, result.stderr
    assert hub.served[f"{TINY}/tiny-Q8_0.gguf"] == 2 * MB and hub.served[f"{TINY}/tiny-Q4_K_M.gguf"] == 0
    assert f"snapshots/{commit}/tiny-Q8_0.gguf" in result.stdout


def test_pattern_entry_fetches_the_matching_files(models_cli: ModelsCli, hub: HubServer) -> None:
    result = models_cli("models.download", "q8-by-pattern")
    assert result.returncode == 0, result.stderr
    assert hub.served[f"{TINY}/tiny-Q8_0.gguf"] == 2 * MB and hub.served[f"{TINY}/tiny-Q4_K_M.gguf"] == 0
    assert _row(models_cli("models.ls").stdout, "q8-by-pattern")[1] == "tiny-Q8_0.gguf"


def test_safetensors_entry_fetches_every_file_and_verifies_lfs_ones(models_cli: ModelsCli) -> None:
    assert models_cli("models.download", "tiny-st").returncode == 0
    checked = models_cli("models.verify", "tiny-st")
    assert checked.returncode == 0, checked.stderr
    assert "unverified" in checked.stdout  # config.json is a plain git file: no LFS sha256 to compare


def test_download_resumes_after_kill(models_cli: ModelsCli, hub: HubServer) -> None:
    """kill -9 a real download halfway; the rerun fetches only the remainder (bytes counted)."""
    from huggingface_hub import scan_cache_dir

    key = "test-org/slow-GGUF/slow.gguf"
    size = hub.repos["test-org/slow-GGUF"].files["slow.gguf"].size
    hub.hold_after = 2 * MB  # the hub stops there until the test lets go: the download cannot finish
    process = models_cli.start("models.download", "slow")
    assert hub.held.wait(timeout=120), "the download never started"
    blobs = models_cli.cache_dir / "models--test-org--slow-GGUF" / "blobs"
    _wait_while_held(lambda: any(p.stat().st_size for p in blobs.glob("*.incomplete")))
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    (partial,) = blobs.glob("*.incomplete")
    kept = partial.stat().st_size
    assert 0 < kept <= hub.served[key] < size
    scanned = scan_cache_dir(models_cli.cache_dir)  # huggingface_hub reads the partial as its own kind
    assert not scanned.warnings and {f.file_path for f in scanned.incomplete_files} == {partial}

    listed = models_cli("models.ls")
    assert "partial" in listed.stdout
    planned = models_cli("models.download", "slow", "--dry-run")
    assert "resume at" in planned.stdout

    hub.reset()
    resumed = models_cli("models.download", "slow")
    assert resumed.returncode == 0, resumed.stderr
    assert hub.ranges == [f"bytes={kept}-"]
    assert hub.served[key] == size - kept
    assert models_cli("models.verify", "slow").returncode == 0
    assert not list(blobs.glob("*.incomplete"))


def test_ctrl_c_stops_the_download_and_says_how_to_resume(models_cli: ModelsCli, hub: HubServer) -> None:
    hub.hold_after = MB  # the hub stops there until the test lets go: the download is in flight
    process = models_cli.start("models.download", "slow")
    assert hub.held.wait(timeout=120), "the download never started"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert (
        stderr.strip()
        == "error: download interrupted — run the same command again: it resumes where it stopped"
    )


def _wait_while_held(written: Callable[[], bool]) -> None:
    """Until the client has written some of what the held hub sent. Not a race: while the hub holds,
    the client has those bytes and waits for the rest, so its file can neither finish nor vanish."""
    deadline = time.monotonic() + 120  # a bound for a broken client only; load cannot make it pass early
    while not written():
        assert time.monotonic() < deadline, "the client never wrote what it got"
        time.sleep(0.05)


def test_dropped_connection_says_so_and_the_rerun_resumes(models_cli: ModelsCli, hub: HubServer) -> None:
    hub.drop_after = MB
    line = _one_line_error(models_cli("models.download", "tiny"))
    assert "connection to" in line and "resumes" in line
    assert "partial 3" in _row(models_cli("models.catalog").stdout, "tiny")[3]  # 1 of 3 MB kept
    hub.reset()
    assert models_cli("models.download", "tiny").returncode == 0
    assert hub.ranges == ["bytes=1048576-"] and hub.served[f"{TINY}/tiny-Q4_K_M.gguf"] == 3 * MB - 1048576


def test_bundled_bytes_download_from_hub_match_the_catalog_pin(models_cli: ModelsCli, hub: HubServer) -> None:
    """The bundled smollm2 bytes (98 MB) served by the hub: downloaded, then verified offline by the pin."""
    assert models_cli("models.download", "smol-hub").returncode == 0
    models_cli.settings["models"]["hub_endpoint"] = dead_endpoint()
    checked = models_cli("models.verify", "smol-hub")
    assert checked.returncode == 0, checked.stderr
    assert "catalog" in checked.stdout and "ok" in checked.stdout


def test_verify_names_a_corrupted_file(models_cli: ModelsCli) -> None:
    assert models_cli("models.download", "tiny").returncode == 0
    blob = next((models_cli.cache_dir / "models--test-org--tiny-GGUF" / "blobs").iterdir())
    with blob.open("r+b") as f:
        f.seek(1000)
        f.write(b"corrupt")
    line = _one_line_error(models_cli("models.verify", "tiny"))
    assert "tiny-Q4_K_M.gguf" in line and "differs from the hub's" in line


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no-repo", "error: repository test-org/does-not-exist not found on"),
        ("no-file", "error: file 'missing.gguf' not found in test-org/tiny-GGUF at 'main'"),
        ("no-rev", "error: revision 'v9-does-not-exist' not found in test-org/tiny-GGUF"),
        ("gated", "error: test-org/gated-GGUF is gated and this token has no access"),
    ],
)
def test_hub_errors_are_one_line_with_a_fix(models_cli: ModelsCli, name: str, message: str) -> None:
    line = _one_line_error(models_cli("models.download", name))
    assert line.startswith(message) and " — " in line


def test_gated_repo_downloads_with_the_configured_token(models_cli: ModelsCli) -> None:
    models_cli.settings["models"]["hub_token"] = GRANTED_TOKEN
    result = models_cli("models.download", "gated")
    assert result.returncode == 0, result.stderr


def test_unreachable_or_offline_hub_says_so_instead_of_blaming_the_catalog(models_cli: ModelsCli) -> None:
    models_cli.settings["models"]["hub_endpoint"] = dead_endpoint()
    assert _one_line_error(models_cli("models.download", "tiny")).startswith("error: cannot reach http://")
    assert _one_line_error(models_cli("models.check")).startswith("error: cannot reach http://")
    models_cli.env["HF_HUB_OFFLINE"] = "1"
    line = _one_line_error(models_cli("models.info", "tiny", "--remote"))
    assert line == "error: HF_HUB_OFFLINE is set — unset HF_HUB_OFFLINE to reach the hub"


def test_download_refuses_when_the_margin_would_not_stay_free(models_cli: ModelsCli, hub: HubServer) -> None:
    models_cli.settings["models"]["free_space_margin_mb"] = 10**12  # an exabyte must stay free
    line = _one_line_error(models_cli("models.download", "tiny"))
    assert line.startswith("error: not enough disk space") and "free_space_margin_mb" in line
    assert hub.served[f"{TINY}/tiny-Q4_K_M.gguf"] == 0
    planned = models_cli("models.download", "tiny", "--dry-run")
    assert planned.returncode == 0 and "does NOT fit" in planned.stdout


def test_bundled_smollm2_works_offline(models_cli: ModelsCli) -> None:
    """The project's own catalog, no reachable hub, HF_HUB_OFFLINE=1: smollm2 is there and verifies."""
    models_cli.settings["models"]["catalog"] = str(config.PROJECT_ROOT / "catalog.yaml")
    models_cli.settings["models"]["hub_endpoint"] = dead_endpoint()
    models_cli.env["HF_HUB_OFFLINE"] = "1"
    downloaded = models_cli("models.download", "smollm2")
    assert downloaded.returncode == 0 and "is bundled" in downloaded.stdout
    verified = models_cli("models.verify", "smollm2")
    assert verified.returncode == 0 and "bundled" in verified.stdout and "ok" in verified.stdout
    assert "bundled" in models_cli("models.ls").stdout
    shown = models_cli("models.info", "smollm2")
    assert shown.returncode == 0 and "SmolLM2-135M-Instruct.Q4_1.gguf: complete bundled" in shown.stdout
    usage = models_cli("models.disk-usage")
    assert usage.returncode == 0 and "smollm2" in usage.stdout and "free at" in usage.stdout


def test_bad_catalog_is_one_line_naming_the_entry(models_cli: ModelsCli, tmp_path: Path) -> None:
    bad = tmp_path / "bad-catalog.yaml"
    bad.write_text("models:\n  - name: broken\n    format: gguf\n")
    models_cli.settings["models"]["catalog"] = str(bad)
    line = _one_line_error(models_cli("models.catalog"))
    assert line.startswith("error: bad-catalog.yaml: entry 'broken':")


def test_olah_mirror_serves_downloads_and_its_ignored_range_restarts_cleanly(
    models_cli: ModelsCli, olah: Olah
) -> None:
    """A real LAN mirror as models.hub_endpoint; olah answers Range with 200, so a partial file restarts."""
    from huggingface_hub import scan_cache_dir

    models_cli.settings["models"]["hub_endpoint"] = olah.url
    assert models_cli("models.download", "tiny").returncode == 0
    checked = models_cli("models.verify", "tiny")
    assert checked.returncode == 0 and "hub" in checked.stdout, checked.stderr

    (repo,) = scan_cache_dir(models_cli.cache_dir).repos
    (cached,) = [f for rev in repo.revisions for f in rev.files]
    assert models_cli("models.rm", "tiny", "--yes").returncode == 0
    incomplete = cached.blob_path.with_name(cached.blob_path.name + ".incomplete")
    incomplete.parent.mkdir(parents=True)
    incomplete.write_bytes(olah.files["tiny-Q4_K_M.gguf"].data.read_bytes()[: MB // 2])
    assert "resume at 500.0 kB" in models_cli("models.download", "tiny", "--dry-run").stdout
    assert models_cli("models.download", "tiny").returncode == 0  # appending after a 200 would corrupt it
    assert models_cli("models.verify", "tiny").returncode == 0


def test_catalog_check_confirms_entries_and_names_the_ones_that_disagree(models_cli: ModelsCli) -> None:
    result = models_cli("models.check")
    assert _row(result.stdout, "tiny")[3] == "ok" and _row(result.stdout, "smol-hub")[3] == "ok"
    assert _row(result.stdout, "no-file")[3] == "not on the hub: missing.gguf"
    assert _row(result.stdout, "no-repo")[3].startswith("repository test-org/does-not-exist not found")
    assert _row(result.stdout, "tiny-st")[3] == "ok"
    assert _row(result.stdout, "wrong-size")[3] == "size_bytes 30.0 MB, hub 3.0 MB"
    line = _one_line_error(result)
    assert "5 catalog entries disagree with the hub: gated, no-repo, no-file, no-rev, wrong-size" in line
    assert _row(result.stdout, "q8-by-pattern")[3] == "ok"
