"""`remote.facts` asks the real server's /health where its server.json says it listens, IPv6 included.

The configured address is 127.0.0.1 on a port nobody listens on; the server runs elsewhere, on IPv4
or IPv6 loopback, so the facts are right only if they follow what the started server recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tasks.core import config, fleet
from tests.ports import free_port


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_running_server_is_healthy_at_the_address_it_bound(
    own_server: Callable[..., Any], project_config: dict[str, Any], host: str
) -> None:
    project_config["server"].update(host="127.0.0.1", port=free_port())
    with own_server(host=host) as server:
        project_config["server"]["state_dir"] = str(server.files.folder)
        settings = config.validate(project_config)
        facts = fleet.local_facts(settings)
        assert (facts.server, facts.health) == (f"running (pid {server.pid})", "ok")
        assert facts.model == server.settings.default_model
    stopped = fleet.local_facts(settings)
    assert (stopped.server, stopped.health) == ("stopped", "down")
    assert stopped.model == f"{settings.server.model} (configured)"
