"""Shared test setup. Fixtures for real servers live in tests/fixtures/<area>.py, loaded here."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tasks.core import config

TESTS = Path(__file__).parent
pytest_plugins = sorted(f"tests.fixtures.{p.stem}" for p in (TESTS / "fixtures").glob("[!_]*.py"))

_SUITE_MARKERS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration, "e2e": pytest.mark.e2e}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder, so `-m unit` and friends select suites."""
    for item in items:
        suite = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if suite in _SUITE_MARKERS:
            item.add_marker(_SUITE_MARKERS[suite])


@pytest.fixture
def project_config() -> dict[str, Any]:
    """A private copy of the project's invoke.yaml, for tests to change freely."""
    return copy.deepcopy(config.read_yaml(config.CONFIG_FILE))
