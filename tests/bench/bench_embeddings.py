"""Benchmark: embeddings throughput (inputs/s and tokens/s) at batch 1, 8 and 32 on the bundled SmolLM2.

Each target embeds the same inputs, RAG-chunk sized (about CHUNK_TOKENS tokens each, every one
different), sent BATCHED inputs per `/v1/embeddings` request one request after another: this server
(mean-pooled over a lazily made embedding context) and llama.cpp's own `llama-server --embedding
--pooling mean` on the same GGUF with the same threads, only when a built binary is already cached in
.bench/llama-server (the prefill and serving benchmarks build it in full mode; this one never starts
that build). A warm-up request first, so the first-use cost (our embedding context) is not counted;
targets take turns per batch size, so a busy moment hits them alike. Quick by default (one round);
`BENCH_FULL=1` takes the best of three.
Run: `.venv/bin/inv test.bench --only embeddings`. Writes .bench/embeddings.json.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx

from tasks.core import config
from tasks.core import server as core
from tests.bench import peers
from tests.bench.report import BENCH_DIR, full_mode, load_line, threads, write_json
from tests.ports import free_port

BATCHES = (1, 8, 32)
INPUTS = 32  # embedded at every batch size: 32 requests of 1, 4 of 8, one of 32
CHUNK_TOKENS = 64
WORDS = [
    "river", "harbour", "lantern", "meadow", "glacier", "orchard", "quarry", "tunnel", "valley", "windmill",
    "kettle", "needle", "pebble", "saddle", "umbrella", "yacht", "bridge", "candle", "desert", "engine",
    "forest", "island", "jungle", "ocean",
]  # fmt: skip


@dataclass(frozen=True)
class Throughput:
    batch: int
    inputs: int
    tokens: int
    seconds: float

    @property
    def inputs_s(self) -> float:
        return self.inputs / self.seconds

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


Measure = Callable[[list[str]], int]  # embeds one request's inputs; returns its prompt tokens


def chunks(count: int, salt: str) -> list[str]:
    """`count` different texts of about CHUNK_TOKENS tokens (no two share a first word)."""
    return [
        f"{salt} {i}: " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(CHUNK_TOKENS - 8))
        for i in range(count)
    ]


def http_measure(served: peers.Served) -> Measure:
    client = httpx.Client(base_url=served.url, headers=served.headers, timeout=600)

    def embed(texts: list[str]) -> int:
        body = {"model": served.model, "input": texts, "encoding_format": "float"}
        response = client.post("/v1/embeddings", json=body)
        response.raise_for_status()
        answer = response.json()
        assert len(answer["data"]) == len(texts)
        return int(answer.get("usage", {}).get("prompt_tokens", 0))

    return embed


def run(measure: Measure, batch: int, texts: list[str]) -> Throughput:
    tokens = 0
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        tokens += measure(texts[i : i + batch])
    return Throughput(batch, len(texts), tokens, time.perf_counter() - started)


SERVER, LLAMA_SERVER = "server", "llama-server"


def main() -> None:
    from tasks.core.console import console, print_table

    rounds = 3 if full_mode() else 1
    settings = core.served_settings(config.load())
    spec = settings.default
    out = console()
    skipped: dict[str, str] = {}
    load_before = os.getloadavg()
    best: dict[str, dict[int, Throughput]] = {}
    with contextlib.ExitStack() as stack:
        targets: dict[str, Measure] = {SERVER: http_measure(stack.enter_context(peers.this_server(settings)))}
        binary = BENCH_DIR / "llama-server" / "build" / "bin" / "llama-server"
        if binary.exists():
            port = free_port()
            cmd = [
                *peers.llama_server_cmd(
                    binary, spec.path, port, slots=1, context=spec.context_size, threads=threads(settings)
                ),
                "--embedding", "--pooling", "mean", "-b", "2048", "-ub", "2048",
            ]  # fmt: skip
            url = stack.enter_context(peers.running(cmd, port, BENCH_DIR / "logs" / "llama-server-embed.log"))
            targets[LLAMA_SERVER] = http_measure(peers.Served(url))
        else:
            skipped[LLAMA_SERVER] = (
                f"no built binary at {binary.relative_to(config.PROJECT_ROOT)} (this benchmark does not "
                "build it: `BENCH_FULL=1 .venv/bin/inv test.bench --only prefill` does, ~10+ minutes)"
            )
        for measure in targets.values():
            measure(chunks(2, "warm-up"))
        for round_ in range(rounds):
            for batch in BATCHES:
                texts = chunks(INPUTS, f"round {round_} batch {batch}")
                for name, measure in targets.items():
                    out.print(f"batch {batch}, round {round_ + 1}: {name}…")
                    result = run(measure, batch, texts)
                    cell = best.setdefault(name, {}).get(batch)
                    if cell is None or result.inputs_s > cell.inputs_s:
                        best[name][batch] = result
    load_after = os.getloadavg()

    print_table(
        f"Embeddings on {settings.default_model} ({spec.path.name}), {INPUTS} inputs of ~{CHUNK_TOKENS} "
        f"tokens per batch size, {threads(settings)} threads, best of {rounds}",
        ["target", "batch", "inputs/s", "tokens/s", "seconds"],
        [
            (name, t.batch, f"{t.inputs_s:.1f}", f"{t.tok_s:.0f}", f"{t.seconds:.2f}")
            for name, cells in best.items()
            for t in cells.values()
        ],
    )
    out.print(load_line(load_before, load_after))
    for name, reason in skipped.items():
        out.print(f"[yellow]skipped {name}: {reason}[/]")
    write_json(
        BENCH_DIR / "embeddings.json",
        {
            "model": settings.default_model,
            "threads": threads(settings),
            "rounds": rounds,
            "inputs": INPUTS,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "targets": {
                name: {
                    batch: {**asdict(t), "inputs_s": t.inputs_s, "tok_s": t.tok_s}
                    for batch, t in cells.items()
                }
                for name, cells in best.items()
            },
            "skipped": skipped,
        },
    )
