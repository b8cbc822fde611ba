"""test.stress refuses unbounded or off-machine loads before sending anything."""

from __future__ import annotations

from typing import Any

import pytest

from tasks.core import config, loadtest, server_state
from tasks.core.errors import HomelabError


def _target(url: str) -> loadtest.Target:
    return loadtest.Target(url=url, api_key="", timeout_s=1, max_tokens=1)


def test_load_above_the_configured_cap_is_refused() -> None:
    with pytest.raises(HomelabError, match=r"above test\.stress_max_requests"):
        loadtest.check_load_bounds(_target("http://127.0.0.1:1"), 11, 1, limit=10, allow_remote=False)


def test_remote_url_needs_allow_remote() -> None:
    remote = _target("http://192.0.2.10:8080")
    with pytest.raises(HomelabError, match="--allow-remote"):
        loadtest.check_load_bounds(remote, 1, 1, limit=10, allow_remote=False)
    loadtest.check_load_bounds(remote, 1, 1, limit=10, allow_remote=True)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://[::1]:8080", "http://localhost:8080"])
def test_loopback_urls_are_allowed(url: str) -> None:
    loadtest.check_load_bounds(_target(url), 1, 1, limit=10, allow_remote=False)


def test_wildcard_bind_is_reached_over_loopback() -> None:
    assert server_state.client_url("0.0.0.0", 8080) == "http://127.0.0.1:8080"
    assert server_state.client_url("::", 8080) == "http://[::1]:8080"
    assert server_state.client_url("::1", 8080) == "http://[::1]:8080"


@pytest.mark.parametrize("url", ["nonsense", "127.0.0.1:8080", "ftp://127.0.0.1", "http://"])
def test_a_url_that_names_no_http_server_is_refused(url: str, project_config: dict[str, Any]) -> None:
    with pytest.raises(HomelabError, match=f"'{url}' is not a server URL"):
        loadtest.target(config.validate(project_config), url)


def test_a_url_given_with_a_trailing_slash_is_used_without_it(project_config: dict[str, Any]) -> None:
    assert loadtest.target(config.validate(project_config), "http://127.0.0.1:9/").url == "http://127.0.0.1:9"
