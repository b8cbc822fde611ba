"""Benchmark: Ollama's /api/chat streaming against this server's OpenAI endpoint, same server and model.

Both APIs sit on the same engine, so the figure is what the API layer costs per token: NDJSON lines
versus SSE chunks. Greedy answers of the same length (num_predict = max_tokens), 1 and 4 streams
started together on fresh connections, the two APIs taking turns; each cell the best of a few rounds.
The target (issue 14) is Ollama-API tok/s ≥ 0.97 × OpenAI's.

Quick by default, as `inv test.bench` runs it; `BENCH_FULL=1` gives longer answers and more rounds.
Run: `.venv/bin/inv test.bench --only ollama`. Writes .bench/ollama.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tasks.core import config
from tasks.core import server as core
from tests.bench import peers
from tests.bench.load import QUESTIONS, Round, Stream, client_tls, drive_streams
from tests.bench.report import BENCH_DIR, full_mode, load_line, write_json

TARGET = 0.97


async def stream_ollama_chat(served: peers.Served, question: str, max_tokens: int) -> Stream:
    """One streamed /api/chat on a fresh connection; tokens from the final object's eval_count."""
    import httpx

    body = {
        "model": served.model,
        "messages": [{"role": "user", "content": question}],
        "options": {"num_predict": max_tokens, "temperature": 0},
    }
    started = time.perf_counter()
    first = 0.0
    last: dict[str, Any] = {}
    async with (
        httpx.AsyncClient(
            base_url=served.url, timeout=600, headers=served.headers, verify=client_tls()
        ) as client,
        client.stream("POST", "/api/chat", json=body) as response,
    ):
        response.raise_for_status()
        buffer = b""
        async for received in response.aiter_bytes():
            *lines, buffer = (buffer + received).split(b"\n")
            for line in lines:
                if not first and line:
                    first = time.perf_counter() - started
                if b'"done":true' in line:
                    last = json.loads(line)
    return Stream(
        ttft_s=first,
        total_s=time.perf_counter() - started,
        tokens=int(last.get("eval_count", 0)),
        prompt_tokens=int(last.get("prompt_eval_count", 0)),
    )


def ollama_turn(served: peers.Served, max_tokens: int) -> Callable[[int], Awaitable[Stream]]:
    def start(i: int) -> Awaitable[Stream]:
        return stream_ollama_chat(served, QUESTIONS[i % len(QUESTIONS)], max_tokens)

    return start


def best(rounds: list[Round]) -> Round:
    return max(rounds, key=lambda r: r.aggregate_tok_s)


def main() -> None:
    from tasks.core.console import print_table

    full = full_mode()
    max_tokens, repeats = (256, 5) if full else (128, 3)
    settings = core.served_settings(config.load())
    before = os.getloadavg()
    cells: dict[str, dict[int, list[Round]]] = {"openai": {}, "ollama": {}}
    with peers.this_server(settings) as served:
        asyncio.run(drive_streams(peers.chat_turn(served, 8), 1))  # warm: the model loaded, pages touched
        for concurrency in (1, 4):
            for repeat in range(repeats):
                turns = [("openai", peers.chat_turn), ("ollama", ollama_turn)]
                for api, turn in turns if repeat % 2 else turns[::-1]:  # neither always goes first
                    measured = asyncio.run(drive_streams(turn(served, max_tokens), concurrency))
                    cells[api].setdefault(concurrency, []).append(measured)
    after = os.getloadavg()
    rows, figures = [], []
    for concurrency in (1, 4):
        openai_best, ollama_best = best(cells["openai"][concurrency]), best(cells["ollama"][concurrency])
        ratio = ollama_best.aggregate_tok_s / openai_best.aggregate_tok_s
        verdict = "ok" if ratio >= TARGET else f"below {TARGET}"
        rows.append(
            (
                str(concurrency),
                f"{openai_best.aggregate_tok_s:.1f}",
                f"{ollama_best.aggregate_tok_s:.1f}",
                f"{ratio:.3f}",
                verdict,
            )
        )
        figures.append(
            {
                "concurrency": concurrency,
                "openai": openai_best.as_dict(),
                "ollama": ollama_best.as_dict(),
                "ratio": ratio,
                "target": TARGET,
            }
        )
    print_table(
        f"Ollama /api/chat vs OpenAI /v1/chat/completions, streamed, {max_tokens} tokens (best of {repeats})",
        ["streams", "openai tok/s", "ollama tok/s", "ollama / openai", "target ≥ 0.97"],
        rows,
    )
    print(load_line(before, after))
    write_json(
        BENCH_DIR / "ollama.json",
        {
            "mode": "full" if full else "quick",
            "max_tokens": max_tokens,
            "repeats": repeats,
            "results": figures,
        },
    )


if __name__ == "__main__":
    main()
