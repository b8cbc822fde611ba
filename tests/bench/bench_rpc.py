"""Benchmark: the bundled SmolLM2 split across hosts with llama.cpp's RPC backend, against local.

Three servers in turn, same settings: the model on this host alone; split a third each between this
host and two rpc-servers on loopback reached directly (llama.cpp's own RPC cost); and the same split
with each rpc-server started on a real sshd "host" through `inv server.start --rpc`, reached through
the keeper's SSH tunnels (what the SSH hop adds). Each: decode tok/s over a greedy answer (streamed,
first token to last) and prompt tok/s of a fresh ~1k-token prompt, the best of the rounds. All on one
box, so the split buys nothing here: it shows the cost of the wire. Anchor: llama.cpp's RPC PR
measured 0.95x of local over its RPC on one host; the target here is >= 0.8x through the tunnels.

Quick by default (one round); BENCH_FULL=1 three. Run: `.venv/bin/inv test.bench --only rpc`.
Writes .bench/rpc.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from inference_server.settings import ServerSettings
from tasks.core import config, rpc
from tasks.core import server as core
from tasks.core.console import console, print_table
from tasks.core.server_state import StateFiles
from tests.bench import peers
from tests.bench.report import BENCH_DIR, cores, full_mode, load_line, write_json
from tests.fixtures.server import settings_for_test
from tests.fixtures.sshd import cli, share_rpc_server, start_lab
from tests.ports import free_port

KEY = "bench"
DECODE_TOKENS = 128
SENTENCE = "The keeper of the lighthouse wrote in the logbook that the sea was calm and the sky clear. "
LOCAL, DIRECT, TUNNELLED = "local", "split, direct RPC", "split, RPC over SSH"


@dataclass(frozen=True)
class Figures:
    decode_tok_s: float
    prompt_tok_s: float
    prompt_tokens: int


def measure(url: str, opener: str) -> Figures:
    """One decode and one prefill through the OpenAI API."""
    headers = {"Authorization": f"Bearer {KEY}"}
    story = "Once upon a time, in a small village by the sea,"
    body = {"model": "smollm2", "prompt": story, "temperature": 0}
    body |= {"max_tokens": DECODE_TOKENS, "stream": True, "stream_options": {"include_usage": True}}
    stamps: list[float] = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=headers, timeout=600) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                event = json.loads(line.removeprefix("data: "))
                if event["choices"] and event["choices"][0]["text"]:
                    stamps.append(time.perf_counter())
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    prompt = {"model": "smollm2", "prompt": f"{opener}. " + SENTENCE * 55, "max_tokens": 1}
    begun = time.perf_counter()
    done = httpx.post(f"{url}/v1/completions", json=prompt, headers=headers, timeout=600).json()
    took = time.perf_counter() - begun
    tokens = done["usage"]["prompt_tokens"]
    return Figures(decode, tokens / took, tokens)


@contextlib.contextmanager
def direct_helpers(count: int, cache: Path) -> Iterator[list[str]]:
    """rpc-servers on this host's loopback, no SSH: llama.cpp's RPC alone."""
    binary = rpc.rpc_server_binary()
    ports = [free_port() for _ in range(count)]
    env = {**os.environ, "LLAMA_CACHE": str(cache)}
    started = [
        subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", str(cores()), "-c"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        for port in ports:
            _wait_for_port(port)
        yield [f"127.0.0.1:{port}" for port in ports]
    finally:
        for process in started:
            process.kill()
            process.wait()


def _wait_for_port(port: int, timeout_s: float = 60) -> None:
    """Until rpc-server accepts (it binds once it has found its devices)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"rpc-server did not listen on 127.0.0.1:{port}")


@contextlib.contextmanager
def split_server(settings: ServerSettings, endpoints: list[str]) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-rpc-") as state:
        files = StateFiles(Path(state))
        served = settings.model_copy(update={"rpc_servers": endpoints})
        core.start(served, files, config.load().server.start_timeout_s)
        try:
            yield served.url
        finally:
            core.stop(files, served.stop_grace_s)


@contextlib.contextmanager
def tunnelled_server(workdir: Path) -> Iterator[str]:
    """`inv server.start --rpc h1,h2` against two real sshd hosts."""
    lab = start_lab(["h1", "h2"])
    try:
        share_rpc_server(lab)
        port = free_port()
        server = {"state_dir": str(workdir / "state"), "port": port, "api_key": KEY}
        lab_yaml = lab.write_config(workdir / "lab.yaml", server=server | {"context_size": 2048, "slots": 1})
        started = cli("inv", lab_yaml, "server.start", "--rpc", "h1,h2", timeout_s=600)
        if started.returncode != 0:
            raise RuntimeError(started.stderr)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            cli("inv", lab_yaml, "server.stop")
    finally:
        lab.stop()


def main() -> None:
    out = console()
    rounds = 3 if full_mode() else 1
    settings = settings_for_test(api_key=KEY, context_size=2048, slots=1)
    load_before = os.getloadavg()
    best: dict[str, Figures] = {}
    openers = iter(f"Round {i}" for i in range(100))
    with tempfile.TemporaryDirectory(prefix="bench-rpc-") as work:
        targets = {
            LOCAL: lambda: _local(settings),
            DIRECT: lambda: _direct(settings, Path(work) / "cache"),
            TUNNELLED: lambda: tunnelled_server(Path(work)),
        }
        for name, target in targets.items():
            out.print(f"{name}…")
            with target() as url:
                measure(url, "Warm-up")  # first-request costs (and the weights' first trip) are not speed
                for _ in range(rounds):
                    got = measure(url, next(openers))
                    if name not in best or got.decode_tok_s > best[name].decode_tok_s:
                        best[name] = got
    load_after = os.getloadavg()
    local = best[LOCAL]
    rows = [
        (
            name,
            f"{f.decode_tok_s:.1f}",
            f"{f.decode_tok_s / local.decode_tok_s:.2f}x",
            f"{f.prompt_tok_s:.0f}",
            f"{f.prompt_tok_s / local.prompt_tok_s:.2f}x",
        )
        for name, f in best.items()
    ]
    print_table(
        f"{settings.default_model} on this host + 2 loopback rpc-servers, best of {rounds}",
        ["target", "decode tok/s", "vs local", f"prompt tok/s ({local.prompt_tokens} tokens)", "vs local"],
        rows,
    )
    ssh_cost = 1 - best[TUNNELLED].decode_tok_s / best[DIRECT].decode_tok_s
    out.print(f"SSH tunnels cost {ssh_cost:.0%} of decode speed against direct RPC")
    out.print(load_line(load_before, load_after))
    write_json(
        BENCH_DIR / "rpc.json",
        {
            "model": settings.default_model,
            "rounds": rounds,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "targets": {name: asdict(f) for name, f in best.items()},
            "ssh_decode_cost": ssh_cost,
        },
    )


@contextlib.contextmanager
def _local(settings: ServerSettings) -> Iterator[str]:
    with peers.this_server(settings) as served:  # its key is KEY too
        yield served.url


@contextlib.contextmanager
def _direct(settings: ServerSettings, cache: Path) -> Iterator[str]:
    with direct_helpers(2, cache) as endpoints, split_server(settings, endpoints) as url:
        yield url


if __name__ == "__main__":
    main()
