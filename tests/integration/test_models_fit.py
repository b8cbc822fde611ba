"""`inv models.fit` and the bundled gemma3 through real `inv` processes (and `fab -H` on the test sshd)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference_server.engines import memory
from tasks.core import catalog, config, store
from tests.fixtures.sshd import Lab, cli

MiB = 1 << 20


def inv(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "inv"), *args]
    environment = {**os.environ, "COLUMNS": "200", **env}
    return subprocess.run(
        command, cwd=config.PROJECT_ROOT, capture_output=True, text=True, env=environment, timeout=120
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def fit_row(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)["rows"]
    return row


def _smollm2() -> Path:
    entry = catalog.load_catalog(config.PROJECT_ROOT / "catalog.yaml")["smollm2"]
    assert entry.bundled is not None
    path = entry.bundled.locate()
    assert path is not None
    return path


def test_fit_prints_the_servers_estimate_against_the_budget() -> None:
    row = fit_row(inv("models.fit", "smollm2", "--context", "2048", "--slots", "1", "--json"))
    expected = memory.estimate(_smollm2(), "gguf", 2048, 1)
    assert row["context"] == 2048 and row["slots"] == 1 and row["verdict"] == "fits"
    assert row["kv cache"] == "45 MiB" and row["estimate"] == f"{expected.total / MiB:,.0f} MiB"
    assert row["budget"] == f"{memory.default_budget_bytes() / MiB:,.0f} MiB"  # memory_budget_mb 0: auto


def test_fit_defaults_come_from_invoke_yaml_with_the_context_capped_by_the_model() -> None:
    settings = config.load().server
    row = fit_row(inv("models.fit", "smollm2", "--json"))
    assert (row["context"], row["slots"]) == (min(settings.context_size, 8192), settings.slots)
    assert fit_row(inv("models.fit", "smollm2", "--context", "100000", "--json"))["context"] == 8192


def test_a_model_over_the_budget_is_refused_with_the_numbers_and_a_context_that_fits() -> None:
    budget = {"INVOKE_SERVER_MEMORY_BUDGET_MB": "200"}
    refused = one_line_error(inv("models.fit", "smollm2", "--context", "8192", **budget))
    assert refused.startswith("error: smollm2 needs ") and "over the budget of 200 MiB" in refused
    assert "KV cache 180 MiB" in refused and "a smaller quant" in refused
    suggested = refused.split("--context ")[1].split()[0]
    row = fit_row(inv("models.fit", "smollm2", "--context", suggested, "--json", **budget))
    assert row["verdict"] == "fits" and row["budget"] == "200 MiB"


def test_a_model_not_installed_names_the_download(tmp_path: Path) -> None:
    refused = one_line_error(inv("models.fit", "tinyllama", INVOKE_MODELS_CACHE_DIR=str(tmp_path)))
    assert refused == "error: model 'tinyllama' is not on this machine — run `inv models.download tinyllama`"


def test_gemma3_is_assembled_listed_and_verified_like_a_bundled_file(tmp_path: Path) -> None:
    cache = {"XDG_CACHE_HOME": str(tmp_path)}
    assembled = tmp_path / "llm-homelab" / "bundled" / "gemma-3-270m-q4_k_m.gguf"
    catalogued = inv("models.catalog", **cache)
    assert catalogued.returncode == 0 and not assembled.exists()  # the catalog only looks the parts up
    listed = inv("models.list", **cache)
    assert listed.returncode == 0, listed.stderr
    assert "gemma-3-270m-q4_k_m.gguf" in listed.stdout and "4 packages, assembled" in listed.stdout
    assert assembled.stat().st_size == 253_113_024
    verified = inv("models.verify", "gemma3", **cache)
    assert verified.returncode == 0 and "bundled" in verified.stdout and "ok" in verified.stdout

    with assembled.open("r+b") as f:  # a flipped byte: the right size, the wrong bytes
        f.seek(1000)
        f.write(b"\xff")
    refused = one_line_error(inv("models.verify", "gemma3", **cache))
    assert "differs from the bundled's" in refused and "inv models.download gemma3" in refused
    assert inv("models.download", "gemma3", **cache).returncode == 0  # the fix it names
    assert store.sha256_of(assembled) == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert inv("models.verify", "gemma3", **cache).returncode == 0


@pytest.fixture
def lab_yaml(ssh_lab: Lab, tmp_path: Path) -> Path:
    return ssh_lab.write_config(tmp_path / "lab.yaml")


def test_fit_through_fab_is_the_hosts_own(lab_yaml: Path) -> None:
    done = cli("fab", lab_yaml, "-H", "b", "models.fit", "smollm2", "--context", "2048", "--json")
    row = fit_row(done)
    assert row["model"] == "smollm2" and row["kv cache"] == "45 MiB" and row["verdict"] == "fits"
