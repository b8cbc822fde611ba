"""What `remote.facts` reports about this host's server, from the files `server.start` leaves behind."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import psutil

from tasks.core import config, fleet, server_state
from tasks.core.server_state import StateFiles


def facts_with_state(project_config: dict[str, Any], state: Path) -> fleet.HostFacts:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    project_config["server"].update(state_dir=str(state), port=port)
    return fleet.local_facts(config.validate(project_config))


def test_no_pidfile_means_stopped_with_the_configured_model(project_config: dict, tmp_path: Path) -> None:
    facts = facts_with_state(project_config, tmp_path)
    assert (facts.server, facts.health) == ("stopped", "down")
    assert facts.model == f"{project_config['server']['model']} (configured)"
    assert facts.disk_free_gb > 0


def test_pidfile_of_a_dead_process_is_stale(project_config: dict, tmp_path: Path) -> None:
    StateFiles(tmp_path).pidfile.write_text("999999999\n")  # above any pid_max
    assert facts_with_state(project_config, tmp_path).server == "stale pidfile"


def test_pidfile_naming_a_live_process_that_is_not_the_server_is_stale(
    project_config: dict, tmp_path: Path
) -> None:
    StateFiles(tmp_path).pidfile.write_text(f"{os.getpid()}\n")  # alive, but nothing recorded it as ours
    assert facts_with_state(project_config, tmp_path).server == "stale pidfile"


def test_running_server_reports_its_own_model_not_the_configured_one(
    project_config: dict, tmp_path: Path
) -> None:
    files = StateFiles(tmp_path)
    assert server_state.record(files, os.getpid(), psutil.Process().cmdline())  # stands in for a server
    served = {"default_model": "tinyllama", "models": [{"name": "tinyllama"}], "port": 1, "host": "127.0.0.1"}
    files.settings.write_text(json.dumps(served))
    facts = facts_with_state(project_config, tmp_path)
    assert facts.server == f"running (pid {os.getpid()})"
    assert (facts.model, facts.health) == ("tinyllama", "down")


def test_facts_round_trip_through_json(project_config: dict, tmp_path: Path) -> None:
    facts = facts_with_state(project_config, tmp_path)
    assert fleet.HostFacts(**json.loads(fleet.facts_json(facts))) == facts
