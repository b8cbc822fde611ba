"""Benchmark: model swaps on one server with the two bundled models (SmolLM2 135M, Gemma 3 270M).

- Swap to first token: the budget has room for one model; with the other loaded, a request for this
  one unloads it, loads this one and streams one token. Warm: the file is in the page cache. Cold:
  the file is dropped from the page cache first (posix_fadvise DONTNEED on the unmapped file).
- Load to first token: the same with room for both (nothing to evict): what a request pays for a
  model nobody asked for in a while.
- Grouping: two clients, one per model, each sending its requests back to back, with room for one
  model: the loads counted with server.swap_grace_s 0 (swap whenever the other model waits) and 5 s
  (the default), against the one-client alternating worst case where every request must swap.

Anchor: llama.cpp's router reloads a cached model in 1–2 s (llama.cpp#17833); target here:
swap-to-first-token ≤ 0.5 s for the ~100 MB bundled model, warm.
Run: `.venv/bin/inv test.bench --only swap` (BENCH_FULL=1: more rounds). Writes .bench/swap.json.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from inference_server import pool
from inference_server.settings import ServerSettings
from tasks.core import config
from tasks.core import server as core
from tasks.core.console import print_table
from tasks.core.server_state import StateFiles
from tests.bench.report import BENCH_DIR, full_mode, load_line, write_json
from tests.ports import free_port

MODELS = ("smollm2", "gemma3")
KEY = "bench"
TIMEOUT_S = 300.0


def settings(room_for: int, **flags: Any) -> ServerSettings:
    """Both models, on a free port, with a budget that holds `room_for` of them (1 or 2)."""
    base = {"models": ",".join(MODELS), "context_size": 2048, "slots": 1, "keep_alive": "-1", **flags}
    probe = core.served_settings(config.load(), **base, port=free_port(), api_key=KEY)
    needs = sorted(pool.footprint(spec, probe).bytes for spec in probe.models)
    budget = max(needs) if room_for == 1 else sum(needs)
    return core.served_settings(
        config.load(), **base, port=free_port(), api_key=KEY, memory_budget_mb=-(-budget // 2**20) + 1
    )


@contextmanager
def serving(served: ServerSettings) -> Iterator[httpx.Client]:
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as state:
        files = StateFiles(Path(state))
        core.start(served, files, TIMEOUT_S)
        try:
            with httpx.Client(
                base_url=served.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT_S
            ) as client:
                yield client
        finally:
            core.stop(files, served.stop_grace_s)


def first_token_s(client: httpx.Client, model: str) -> float:
    """From sending a one-token streamed request to its first content chunk."""
    request = {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 1,
        "stream": True,
    }
    started = time.perf_counter()
    elapsed = 0.0
    with client.stream("POST", "/v1/chat/completions", json=request) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():  # read to the end: the model is released when the stream is
            if not elapsed and line.startswith("data: ") and '"content"' in line:
                elapsed = time.perf_counter() - started
    if not elapsed:
        raise RuntimeError(f"no token from {model}")
    return elapsed


def drop_from_page_cache(path: Path) -> None:
    with path.open("rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def admin(client: httpx.Client, name: str, action: str) -> None:
    client.post(f"/admin/models/{name}/{action}").raise_for_status()


def loads(client: httpx.Client) -> int:
    rows = client.get("/metrics").text.splitlines()
    return int(sum(float(r.split()[-1]) for r in rows if r.startswith("homelab_model_loads_total{")))


def swaps(rounds: int) -> list[dict[str, Any]]:
    served = settings(room_for=1)
    paths = {spec.name: spec.path for spec in served.models}
    results = []
    with serving(served) as client:
        for target in MODELS:
            other = next(m for m in MODELS if m != target)
            for cache in ("warm", "cold"):
                times = []
                for _ in range(rounds):
                    first_token_s(client, other)  # the other model is loaded (and this one evicted)
                    if cache == "cold":
                        drop_from_page_cache(paths[target])
                    times.append(first_token_s(client, target))
                results.append({"what": "swap", "model": target, "cache": cache, "times_s": times})
    with serving(settings(room_for=2)) as client:
        for target in MODELS:
            times = []
            for _ in range(rounds):
                admin(client, target, "unload")
                times.append(first_token_s(client, target))
            results.append({"what": "load", "model": target, "cache": "warm", "times_s": times})
    return results


def grouping(requests: int) -> list[dict[str, Any]]:
    results = []
    for grace in (0, 2, 5):
        with serving(settings(room_for=1, swap_grace_s=grace)) as client:
            before, started = loads(client), time.perf_counter()
            workers = [
                threading.Thread(target=lambda m=model: [first_token_s(client, m) for _ in range(requests)])
                for model in MODELS
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            results.append(
                {
                    "clients": "one per model, concurrent",
                    "swap_grace_s": grace,
                    "requests": 2 * requests,
                    "loads": loads(client) - before,
                    "wall_s": time.perf_counter() - started,
                }
            )
    with serving(settings(room_for=1)) as client:
        before, started = loads(client), time.perf_counter()
        for i in range(2 * requests):
            first_token_s(client, MODELS[i % 2])
        results.append(
            {
                "clients": "one, alternating",
                "swap_grace_s": 5,
                "requests": 2 * requests,
                "loads": loads(client) - before,
                "wall_s": time.perf_counter() - started,
            }
        )
    return results


def main() -> None:
    rounds, requests = (7, 20) if full_mode() else (3, 8)
    load_before = os.getloadavg()
    timed = swaps(rounds)
    grouped = grouping(requests)
    load_after = os.getloadavg()
    print_table(
        f"Model swaps to first token, best and median of {rounds} (s)",
        ["what", "model", "page cache", "best s", "median s"],
        [
            (
                r["what"],
                r["model"],
                r["cache"],
                f"{min(r['times_s']):.3f}",
                f"{statistics.median(r['times_s']):.3f}",
            )
            for r in timed
        ],
    )
    print_table(
        "Grouping interleaved requests for two models that cannot both fit",
        ["clients", "swap_grace_s", "requests", "loads", "wall s"],
        [(g["clients"], g["swap_grace_s"], g["requests"], g["loads"], f"{g['wall_s']:.1f}") for g in grouped],
    )
    print(load_line(load_before, load_after))
    write_json(
        BENCH_DIR / "swap.json",
        {"rounds": rounds, "swaps": timed, "grouping": grouped, "load_average": [load_before, load_after]},
    )


if __name__ == "__main__":
    main()
