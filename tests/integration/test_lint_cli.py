"""The lint tasks through the real `inv` CLI, on a copy of the project with planted problems."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNUSED_IMPORT = "import os\n\n\ndef answer() -> int:\n    return 42\n"
BAD_TYPE = 'def answer() -> int:\n    return "forty-two"\n'


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's tasks and settings, with its own empty inference_server package."""
    copy = tmp_path / "project"
    shutil.copytree(ROOT / "tasks", copy / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "invoke.yaml", "catalog.yaml"):
        shutil.copy(ROOT / name, copy / name)
    (copy / "inference_server").mkdir()
    (copy / "inference_server" / "__init__.py").write_text('"""Placeholder package for mypy."""\n')
    return copy


def inv(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "invoke", "--search-root", str(project), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=project, timeout=300)


def test_check_fails_naming_the_file_and_fix_repairs_it(project: Path) -> None:
    (project / "inference_server" / "planted.py").write_text(UNUSED_IMPORT)
    failed = inv(project, "lint.check")
    assert failed.returncode == 1
    assert "planted.py" in failed.stdout and "F401" in failed.stdout
    assert "error: 1 of 1 failed: lint.check" in failed.stderr
    assert inv(project, "lint.fix").returncode == 0
    assert "import os" not in (project / "inference_server" / "planted.py").read_text()
    assert inv(project, "lint.check").returncode == 0


def test_format_check_reports_without_changing_and_format_rewrites(project: Path) -> None:
    planted = project / "inference_server" / "planted.py"
    planted.write_text("x = {  'a':1 }\n")
    checked = inv(project, "lint.format", "--check")
    assert checked.returncode == 1 and "planted.py" in checked.stdout
    assert planted.read_text() == "x = {  'a':1 }\n"
    assert inv(project, "lint.format").returncode == 0
    assert planted.read_text() == 'x = {"a": 1}\n'


def test_types_fails_on_a_type_error(project: Path) -> None:
    (project / "inference_server" / "planted.py").write_text(BAD_TYPE)
    done = inv(project, "lint.types")
    assert done.returncode == 1
    assert "planted.py:2: error: Incompatible return value type" in done.stdout
