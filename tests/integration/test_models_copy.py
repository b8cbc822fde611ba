"""`inv models.copy` over the real sshd lab: a model file registered in this machine's cache the way a
download leaves it (blob named by its sha256, snapshot link, ref), copied into hosts' caches."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fixtures.sshd import USER, Lab, cli

ENTRY = "tinyllama"  # in catalog.yaml with no sha256 pin: the blob's name is what arrivals are held to
REPO_DIR = "models--TheBloke--TinyLlama-1.1B-Chat-v1.0-GGUF"
FILE = "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"
COMMIT = "52e7645ba7c309695bec7ac98f4f005b139cf465"
SIZE = 8 * 2**20 + 12345
CUT = 3 * 2**20  # where the interrupted copy stopped
DESTINATIONS = ("x", "y")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, str]:
    """This machine's cache with the entry's file in it; the file's bytes and sha256."""
    cache = tmp_path_factory.mktemp("copy-source") / "hub"
    data = b"GGUF" + os.urandom(SIZE - 4)
    digest = hashlib.sha256(data).hexdigest()
    storage = cache / REPO_DIR
    (storage / "blobs").mkdir(parents=True)
    (storage / "blobs" / digest).write_bytes(data)
    (storage / "snapshots" / COMMIT).mkdir(parents=True)
    (storage / "snapshots" / COMMIT / FILE).symlink_to(f"../../blobs/{digest}")
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(COMMIT)
    return cache, data, digest


@pytest.fixture(scope="module")
def hosts(ssh_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Hosts x and y (sshd a and b) with their own checkouts, whose invoke.yaml points models.cache_dir
    at a folder of their own; name -> that cache folder."""
    root = tmp_path_factory.mktemp("copy-hosts")
    caches = {}
    for name, sshd in zip(DESTINATIONS, ("a", "b"), strict=True):
        checkout = root / name / "llm-homelab"
        subprocess.run(
            ["git", "clone", "-q", "--shared", str(ssh_lab.hosts[sshd].checkout), str(checkout)], check=True
        )
        settings = (checkout / "invoke.yaml").read_text()
        caches[name] = root / name / "hub"
        moved = settings.replace("  cache_dir: ~/.cache/huggingface/hub ", f"  cache_dir: {caches[name]} ")
        assert moved != settings
        (checkout / "invoke.yaml").write_text(moved)
    return caches


@pytest.fixture
def lab_yaml(
    ssh_lab: Lab, hosts: dict[str, Path], model: tuple[Path, bytes, str], tmp_path: Path
) -> Iterator[Path]:
    inventory = {
        name: {
            "host": "127.0.0.1",
            "port": ssh_lab.hosts[sshd].port,
            "user": USER,
            "checkout": str(cache.parent / "llm-homelab"),
            "python": sys.executable,
        }
        for (name, cache), sshd in zip(hosts.items(), ("a", "b"), strict=True)
    }
    config = ssh_lab.write_config(tmp_path / "lab.yaml", extra_hosts=inventory)
    settings = yaml.safe_load(config.read_text())
    settings["models"] = {"cache_dir": str(model[0])}
    config.write_text(yaml.safe_dump(settings))
    yield config
    for cache in hosts.values():
        shutil.rmtree(cache, ignore_errors=True)


def copy(config: Path, *args: str) -> tuple[int, list[dict[str, str]], str]:
    done = cli("inv", config, "models.copy", ENTRY, "--json", *args)
    lines = done.stdout.strip().splitlines()
    rows = json.loads(lines[-1])["rows"] if lines else []
    return done.returncode, rows, done.stdout + done.stderr


def installed(config: Path, host: str) -> list[dict[str, str]]:
    """What `models.ls` on the host lists of the entry."""
    shown = cli("fab", config, "-H", host, "models.ls", "--json")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    table = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"rows": []}
    return [row for row in table["rows"] if row["name"] == ENTRY]


def interrupt(cache: Path, data: bytes, digest: str) -> Path:
    """Leave on a host what a copy killed after CUT bytes leaves: the partial blob and its marker."""
    storage = cache / REPO_DIR
    (storage / "blobs").mkdir(parents=True)
    partial = storage / "blobs" / f"{digest}.incomplete"
    partial.write_bytes(data[:CUT])
    (storage / ".partial").mkdir()
    (storage / ".partial" / FILE).write_text(f"{digest} {SIZE}\n")
    return partial


def test_copy_installs_on_each_host_relays_and_skips_a_host_that_has_it(
    lab_yaml: Path, hosts: dict[str, Path], model: tuple[Path, bytes, str]
) -> None:
    _, data, digest = model
    code, rows, said = copy(lab_yaml, "--to", "x")
    assert code == 0, said
    assert [(r["host"], r["result"]) for r in rows] == [("x", "copied")]
    assert [(r["file"], r["state"]) for r in installed(lab_yaml, "x")] == [(FILE, "complete")]
    pointer = hosts["x"] / REPO_DIR / "snapshots" / COMMIT / FILE
    assert pointer.is_symlink() and pointer.read_bytes() == data
    assert pointer.resolve() == hosts["x"] / REPO_DIR / "blobs" / digest

    code, rows, said = copy(lab_yaml, "--from", "x", "--to", "y")  # host to host, through here
    assert code == 0, said
    assert [(r["host"], r["result"]) for r in rows] == [("y", "copied")]
    assert (hosts["y"] / REPO_DIR / "snapshots" / COMMIT / FILE).read_bytes() == data

    code, rows, said = copy(lab_yaml, "--to", "x,y")
    assert code == 0, said
    assert [(r["host"], r["result"], r["sent"]) for r in rows] == [
        ("x", "already there", "0 B"),
        ("y", "already there", "0 B"),
    ]


def test_an_interrupted_copy_continues_from_its_size(
    lab_yaml: Path, hosts: dict[str, Path], model: tuple[Path, bytes, str]
) -> None:
    _, data, digest = model
    partial = interrupt(hosts["x"], data, digest)
    assert [r["state"] for r in installed(lab_yaml, "x")] == ["partial 37%"]
    inode = partial.stat().st_ino
    code, rows, said = copy(lab_yaml, "--to", "x")
    assert code == 0, said
    assert [(r["host"], r["result"]) for r in rows] == [("x", f"resumed at {CUT} B")]
    blob = hosts["x"] / REPO_DIR / "blobs" / digest
    assert blob.read_bytes() == data
    assert blob.stat().st_ino == inode  # the partial file itself grew into the blob
    assert not (hosts["x"] / REPO_DIR / ".partial" / FILE).exists()
    assert [r["state"] for r in installed(lab_yaml, "x")] == ["complete"]


def test_a_corrupted_arrival_is_caught_and_removed(
    lab_yaml: Path, hosts: dict[str, Path], model: tuple[Path, bytes, str]
) -> None:
    _, data, digest = model
    damaged = bytearray(data[:CUT])
    damaged[CUT // 2] ^= 0xFF  # one flipped byte in what arrived before the interruption
    interrupt(hosts["y"], bytes(damaged), digest)
    code, rows, said = copy(lab_yaml, "--to", "y")
    assert code == 1
    assert [(r["host"], r["result"]) for r in rows] == [("y", "CORRUPT: removed")]
    assert rows[0]["detail"].endswith(f"not {digest[:16]}…: the copy was removed")
    assert said.strip().splitlines()[-1].startswith(f"error: {ENTRY}: 1 of 1 copies failed (y: CORRUPT")
    assert not list((hosts["y"] / REPO_DIR / "blobs").iterdir())
    assert installed(lab_yaml, "y") == []


def test_a_bundled_model_needs_no_copy(lab_yaml: Path) -> None:
    done = cli("inv", lab_yaml, "models.copy", "smollm2", "--to", "x")
    assert done.returncode == 0, done.stderr
    assert "smollm2 is bundled" in done.stdout


def test_a_copy_the_hosts_disk_cannot_hold_is_refused_before_its_first_byte(
    lab_yaml: Path, hosts: dict[str, Path]
) -> None:
    """Host x keeps a margin larger than any disk free: the copy fails in one line and sends nothing."""
    settings = hosts["x"].parent / "llm-homelab" / "invoke.yaml"
    kept = settings.read_text()
    margin = "  free_space_margin_mb: 512 "
    assert margin in kept
    settings.write_text(kept.replace(margin, "  free_space_margin_mb: 1000000000000 "))
    try:
        code, rows, said = copy(lab_yaml, "--to", "x")
    finally:
        settings.write_text(kept)
    assert code == 1, said
    assert [(r["host"], r["result"], r["sent"]) for r in rows] == [("x", "failed", "0 B")]
    assert rows[0]["detail"].startswith(
        "x: not enough disk space: the copy needs 8.4 MB, and only 0 B is free"
    )
    assert rows[0]["detail"].endswith("— free some space there or lower that margin")
    assert not (hosts["x"] / REPO_DIR).exists()
