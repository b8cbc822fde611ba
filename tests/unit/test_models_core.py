"""The error table and the local side of `models`, without servers."""

from __future__ import annotations

import errno
from pathlib import Path

import httpx2
import pytest
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.utils import hf_raise_for_status

from tasks.core import catalog, config, hub, store
from tasks.core.config import ModelsSettings
from tasks.core.errors import HomelabError
from tests.imports import loaded_by_inv

ENDPOINT = "http://mirror.lan:8090"
CONTEXT = {"endpoint": ENDPOINT, "repo": "org/model-GGUF", "revision": "main", "file": "m.gguf"}


def _hub_error(
    status: int, code: str = "", url_path: str = "/org/model-GGUF/resolve/main/m.gguf"
) -> Exception:
    """The exception huggingface_hub itself raises for such a response."""
    request = httpx2.Request("HEAD", ENDPOINT + url_path)
    response = httpx2.Response(status, headers={"X-Error-Code": code} if code else {}, request=request)
    with pytest.raises(Exception) as caught:
        hf_raise_for_status(response)
    return caught.value


@pytest.mark.parametrize(
    ("error", "problem", "fix_mentions"),
    [
        (_hub_error(404, "RepoNotFound"), "repository org/model-GGUF not found on", "models.hub_token"),
        (_hub_error(403, "GatedRepo"), "org/model-GGUF is gated", f"{ENDPOINT}/org/model-GGUF"),
        (_hub_error(404, "RevisionNotFound"), "revision 'main' not found", "--revision"),
        (_hub_error(404, "EntryNotFound"), "file 'm.gguf' not found in org/model-GGUF", "--file"),
        (_hub_error(401), "rejected the token", "hub_token"),
        (_hub_error(503), "answered HTTP 503", "try again later"),
        (OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE"),
        (httpx2.ConnectError("refused"), f"cannot reach {ENDPOINT}", "models.hub_endpoint"),
        (httpx2.RemoteProtocolError("peer closed"), "connection to", "resumes"),
        (OSError(errno.ENOSPC, "No space left on device"), "disk filled up while writing m.gguf", "resumes"),
    ],
)
def test_hub_failures_map_to_one_line_with_a_fix(error: Exception, problem: str, fix_mentions: str) -> None:
    explained = hub.explain(error, **CONTEXT)
    assert explained is not None
    assert problem in explained.problem and fix_mentions in explained.fix
    assert "\n" not in explained.message


def test_unexpected_errors_are_not_dressed_up() -> None:
    assert hub.explain(OSError(errno.EACCES, "denied"), **CONTEXT) is None
    assert hub.explain(ValueError("bug"), **CONTEXT) is None


def _plan(to_fetch: int, free: int, margin: int) -> hub.DownloadPlan:
    remote = hub.RemoteFile("o/r", "f.gguf", "main", "c" * 40, "e" * 64, to_fetch, "http://x")
    return hub.DownloadPlan([hub.FilePlan(remote, 0, cached=False)], Path("/cache"), free, margin)


def test_download_fits_only_when_the_margin_stays_free() -> None:
    assert _plan(to_fetch=100, free=1000, margin=900).fits
    assert not _plan(to_fetch=101, free=1000, margin=900).fits
    assert _plan(to_fetch=0, free=0, margin=900).to_fetch == 0


def _models(tmp_path: Path) -> ModelsSettings:
    return ModelsSettings(
        catalog=config.PROJECT_ROOT / "catalog.yaml",
        cache_dir=tmp_path / "cache",
        hub_endpoint=ENDPOINT,
        hub_token="",
        free_space_margin_mb=0,
        converted_dir=tmp_path / "mlx",
    )


def test_installed_file_of_smollm2_is_the_bundled_file(tmp_path: Path) -> None:
    entry = catalog.load_catalog(config.PROJECT_ROOT / "catalog.yaml")["smollm2"]
    assert entry.bundled is not None
    assert store.installed_file(entry, _models(tmp_path)) == entry.bundled.locate()


def test_cache_dir_that_is_a_file_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    models = _models(tmp_path)
    models.cache_dir.write_text("not a folder")
    with pytest.raises(HomelabError, match=r"^models.cache_dir .*/cache is a file, not a folder — point"):
        store.disk_usage([], models)


def test_nothing_installed_means_none_and_an_empty_state(tmp_path: Path) -> None:
    entry = catalog.load_catalog(config.PROJECT_ROOT / "catalog.yaml")["qwen"]
    models = _models(tmp_path)
    assert store.installed_file(entry, models) is None
    assert store.install_state(entry, models) == ""
    assert store.plan_deletion(entry, models).files == []


@pytest.mark.parametrize("name", ["../../outside.gguf", "/etc/passwd", "sub/../../x.gguf"])
def test_file_names_that_leave_the_snapshot_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(HomelabError, match="unsafe file name"):
        store.pointer_path(tmp_path, "c" * 40, name)


@pytest.mark.parametrize("env", [{}, {"INVOKE_SERVER_PORT": "8081"}], ids=["plain", "env-override"])
def test_listing_tasks_loads_no_heavy_library(env: dict[str, str]) -> None:
    """`inv -l` imports every task module; the hub client, rich and pydantic wait for a task to run,
    also when an INVOKE_* override makes the collection check the environment while it loads."""
    heavy = {"huggingface_hub", "httpx", "httpx2", "rich", "pydantic", "fabric", "paramiko"}
    assert loaded_by_inv("-l", env=env) & heavy == set()


QUANTS = ["m-Q4_K_M.gguf", "m-Q4_0.gguf", "m-Q8_0.gguf"]


@pytest.mark.parametrize(
    ("file", "quant", "chosen"),
    [("m-Q4_0.gguf", "", "m-Q4_0.gguf"), ("", "q8_0", "m-Q8_0.gguf"), ("", "Q4_K", "m-Q4_K_M.gguf")],
)
def test_file_or_quant_picks_one_of_the_entry_files(file: str, quant: str, chosen: str) -> None:
    entry = catalog.load_catalog(config.PROJECT_ROOT / "catalog.yaml")["qwen"]
    assert hub.choose_file(entry, QUANTS, file=file, quant=quant) == chosen


@pytest.mark.parametrize(
    ("file", "quant", "problem"),
    [
        ("other.gguf", "", "qwen: no file of its catalog entry matches --file other.gguf"),
        ("m-Q4", "", "qwen: no file of its catalog entry matches --file m-Q4"),  # --file is exact
        ("", "q4", "qwen: more than one file of its catalog entry matches --quant q4"),
    ],
)
def test_file_or_quant_outside_the_entry_is_refused_with_the_choices(
    file: str, quant: str, problem: str
) -> None:
    entry = catalog.load_catalog(config.PROJECT_ROOT / "catalog.yaml")["qwen"]
    with pytest.raises(HomelabError) as refused:
        hub.choose_file(entry, QUANTS, file=file, quant=quant)
    assert refused.value.problem == problem and "choose one of: m-Q4" in refused.value.fix
