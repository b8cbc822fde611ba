"""`remote.facts` asks the server's /health where server.json says it listens, IPv6 loopback included.

The server itself is on another branch; a stdlib HTTP server answering /health stands in for it here.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

from tasks.core import config, fleet, server_state


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "model": "stand-in"}).encode()
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.fixture(params=["127.0.0.1", "::1"])
def health_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    server_class = _IPv6Server if ":" in request.param else ThreadingHTTPServer
    server = server_class((request.param, 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield request.param, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_running_server_is_healthy_at_the_address_it_bound(
    health_server: tuple[str, int], project_config: dict, tmp_path: Path
) -> None:
    host, port = health_server
    files = server_state.StateFiles(tmp_path)
    server_state.record(files, os.getpid(), psutil.Process().cmdline())
    files.settings.write_text(json.dumps({"model_name": "smollm2", "host": host, "port": port}))
    project_config["server"]["state_dir"] = str(tmp_path)
    facts = fleet.local_facts(config.validate(project_config))
    assert (facts.health, facts.model) == ("ok", "stand-in")
