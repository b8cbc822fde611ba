"""Every third-party module the project imports comes from a distribution pyproject.toml declares."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"tasks", "inference_server", "tests", "fabfile"}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    lines = project["dependencies"] + [line for extra in extras for line in extra]
    return {canonicalize_name(Requirement(line).name) for line in lines}


def _imported(folder: Path) -> dict[str, str]:
    """Top-level module name -> a file that imports it (absolute imports only)."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared_in_pyproject() -> None:
    declared, owners = _declared(), packages_distributions()
    undeclared = []
    for folder in ("tasks", "inference_server"):
        for module, where in _imported(ROOT / folder).items():
            if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
                continue
            distributions = {canonicalize_name(d) for d in owners.get(module, [module])}
            if not distributions & declared:
                undeclared.append(f"{module} ({where}; from {', '.join(sorted(distributions))})")
    assert undeclared == []
