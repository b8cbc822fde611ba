"""Tables: identifying columns kept whole, one line per row through a pipe, and `--json` everywhere."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import ns
from tasks.core import console

ROOT = Path(__file__).resolve().parents[2]
PRINTS_TABLES = ("print_table(", "suites.report(", "_suite(", "_show_losses(", "_show_plan(")
FORWARDS_ITS_ARGS = {"fleet.run"}  # `--args=--json` must reach the task it runs, not fleet.run


def _tasks(collection: object, prefix: str = "") -> list[tuple[str, object]]:
    found = [(prefix + name, task) for name, task in collection.tasks.items()]  # type: ignore[attr-defined]
    for name, sub in collection.collections.items():  # type: ignore[attr-defined]
        found += _tasks(sub, f"{prefix}{name}.")
    return found


def test_every_task_that_prints_a_table_takes_json() -> None:
    printing = [
        (name, task)
        for name, task in _tasks(ns)
        if name not in FORWARDS_ITS_ARGS
        and any(call in inspect.getsource(task.body) for call in PRINTS_TABLES)  # type: ignore[attr-defined]
    ]
    assert len(printing) > 20
    missing = [
        name
        for name, task in printing
        if "json" not in [argument.name for argument in task.get_arguments()]  # type: ignore[attr-defined]
    ]
    assert missing == []


def test_a_table_through_a_pipe_keeps_every_cell_whole_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    long_path = "reference/" + "a-rather-long-directory-name/" * 6 + "end"
    console.print_table("T", ["path", "detail"], [(long_path, "x" * 300)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6  # title, three rules, the header and one row
    assert long_path in lines[4] and "x" * 300 in lines[4]


def test_json_output_is_the_table_alone_and_messages_go_to_stderr() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "models.catalog", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "80"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    table = json.loads(done.stdout)
    assert table["table"] == "Model catalog"
    assert {"name", "format", "size", "installed", "model"} == set(table["rows"][0])
    assert "smollm2" in [row["name"] for row in table["rows"]]
    assert "Sizes are approximate" in done.stderr
