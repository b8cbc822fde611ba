"""Benchmark: the gateway's overhead, direct vs through it, and two servers behind it vs one.

The same server on the bundled model is reached directly, through the gateway (HAProxy and our
controller, as `inv gateway.start` runs them) and, when a LiteLLM proxy is installed (`litellm` on PATH
or BENCH_LITELLM=/path/to/litellm), through LiteLLM's proxy: the candidate engine the issue named.
Greedy streams of one length, 1 and 4 at once on fresh connections, the targets taking turns; each
cell the best of a few rounds. Targets (issue 15): TTFT p50 overhead ≤ 10 ms, aggregate ≥ 0.95 × direct.
Then 8 streams through a gateway with two servers behind it vs one (both share this machine's cores:
reported, not a target).

Quick by default, as `inv test.bench` runs it; `BENCH_FULL=1` gives longer answers and more rounds.
Run: `.venv/bin/inv test.bench --only gateway`. Writes .bench/gateway.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tasks.core import config, gateway
from tasks.core import server as core
from tests.bench import peers
from tests.bench.load import Round, drive_streams
from tests.bench.report import BENCH_DIR, full_mode, load_line, write_json
from tests.ports import free_port

TTFT_TARGET_S = 0.010
RATIO_TARGET = 0.95
KEY = "bench-gateway"


@contextlib.contextmanager
def through_gateway(servers: list[peers.Served]) -> Iterator[peers.Served]:
    """`inv gateway.start` in front of `servers`, each an equal-priority host."""
    base = config.load()
    hosts = {
        f"h{i}": config.HostSettings(host="127.0.0.1", url=s.url, api_key=s.api_key)
        for i, s in enumerate(servers)
    }
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as state:
        section = base.lab_gateway.model_copy(update={"port": free_port(), "state_dir": Path(state)})
        settings = base.model_copy(update={"hosts": hosts, "lab_gateway": section})
        url = gateway.start(settings, gateway.engine(settings, key=KEY))
        try:
            yield peers.Served(url, servers[0].model, KEY)
        finally:
            gateway.stop(settings)


def litellm_command() -> str:
    return os.environ.get("BENCH_LITELLM") or shutil.which("litellm") or ""


@contextlib.contextmanager
def through_litellm(server: peers.Served, command: str) -> Iterator[peers.Served]:
    """LiteLLM's proxy (one worker) in front of `server`, as an OpenAI-compatible deployment."""
    import httpx

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-litellm-") as scratch:
        cfg = Path(scratch) / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            f"  - model_name: {server.model}\n"
            "    litellm_params:\n"
            f"      model: openai/{server.model}\n"
            f"      api_base: {server.url}/v1\n"
            f"      api_key: {server.api_key}\n"
            "general_settings:\n"
            "  master_key: sk-bench\n"
        )
        log = (Path(scratch) / "litellm.log").open("w")
        proc = subprocess.Popen(
            [command, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise peers.PeerUnavailable(f"litellm did not start; see {log.name}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/health/liveliness", timeout=2).status_code == 200:
                        break
                time.sleep(0.5)
            yield peers.Served(url, server.model, "sk-bench")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


def best(rounds: list[Round]) -> Round:
    return max(rounds, key=lambda r: r.aggregate_tok_s)


def fastest_ttft(rounds: list[Round]) -> float:
    return min(r.ttft_p50_s for r in rounds)


def measure(
    targets: dict[str, peers.Served], concurrency: int, repeats: int, max_tokens: int
) -> dict[str, list[Round]]:
    cells: dict[str, list[Round]] = {name: [] for name in targets}
    order = list(targets)
    for repeat in range(repeats):
        for name in order if repeat % 2 else order[::-1]:  # none always goes first
            cells[name].append(
                asyncio.run(drive_streams(peers.chat_turn(targets[name], max_tokens), concurrency))
            )
    return cells


def main() -> None:
    from tasks.core.console import print_table

    full = full_mode()
    max_tokens, repeats = (256, 5) if full else (64, 3)
    settings = core.served_settings(config.load())
    before = os.getloadavg()
    rows, figures, skipped = [], [], ""
    with contextlib.ExitStack() as stack:
        direct = stack.enter_context(peers.this_server(settings))
        targets = {"direct": direct, "gateway": stack.enter_context(through_gateway([direct]))}
        if command := litellm_command():
            try:
                targets["litellm"] = stack.enter_context(through_litellm(direct, command))
            except peers.PeerUnavailable as exc:
                skipped = str(exc)
        else:
            skipped = (
                "litellm not installed (pip install 'litellm[proxy]', or BENCH_LITELLM=/path/to/litellm)"
            )
        for served in targets.values():  # warm: model loaded, routes and pools set up
            asyncio.run(drive_streams(peers.chat_turn(served, 8), 1))
        for concurrency in (1, 4):
            cells = measure(targets, concurrency, repeats, max_tokens)
            reference = best(cells["direct"])
            for name, rounds in cells.items():
                top, ttft = best(rounds), fastest_ttft(rounds)
                overhead = ttft - fastest_ttft(cells["direct"])
                ratio = top.aggregate_tok_s / reference.aggregate_tok_s
                verdict = (
                    "-"
                    if name == "direct"
                    else "ok"
                    if overhead <= TTFT_TARGET_S and ratio >= RATIO_TARGET
                    else "misses"
                )
                rows.append(
                    (
                        name,
                        str(concurrency),
                        f"{ttft * 1000:.1f}",
                        f"{overhead * 1000:+.1f}",
                        f"{top.aggregate_tok_s:.1f}",
                        f"{ratio:.3f}",
                        verdict,
                    )
                )
                figures.append(
                    {
                        "target": name,
                        "concurrency": concurrency,
                        "best": top.as_dict(),
                        "ttft_p50_s": ttft,
                        "ttft_overhead_s": overhead,
                        "ratio": ratio,
                    }
                )
        second = stack.enter_context(peers.this_server(settings))
        with through_gateway([direct, second]) as both:
            two = measure({"one server": targets["gateway"], "two servers": both}, 8, repeats, max_tokens)
    after = os.getloadavg()
    one_best, two_best = best(two["one server"]), best(two["two servers"])
    print_table(
        f"Direct vs through a gateway, streamed, {max_tokens} tokens (best of {repeats})",
        ["target", "streams", "TTFT p50 ms", "overhead ms", "tok/s", "× direct", "target ≤10 ms, ≥0.95"],
        rows,
    )
    print_table(
        "8 streams through the gateway: one server behind it vs two (same cores: reported, no target)",
        ["servers", "tok/s", "TTFT p50 ms"],
        [
            (name, f"{r.aggregate_tok_s:.1f}", f"{r.ttft_p50_s * 1000:.1f}")
            for name, r in (("one", one_best), ("two", two_best))
        ],
    )
    if skipped:
        print(f"litellm: skipped: {skipped}")
    print(load_line(before, after))
    write_json(
        BENCH_DIR / "gateway.json",
        {
            "mode": "full" if full else "quick",
            "max_tokens": max_tokens,
            "repeats": repeats,
            "results": figures,
            "eight_streams": {"one_server": one_best.as_dict(), "two_servers": two_best.as_dict()},
            "litellm_skipped": skipped,
        },
    )


if __name__ == "__main__":
    main()
