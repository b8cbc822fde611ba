"""Benchmark: the GGUF engine in-process against llama.cpp's llama-server and llama-cpp-python's server.

Same model (the bundled SmolLM2), same slots and context, greedy 128-token answers, 1/2/4/8 streams
started together (fresh connection per request for the servers), then a two-turn conversation under a
~2,000-token system prompt to show prefix reuse. Each cell is run REPEATS times and the best kept, as
the machine is shared; the load average before and after is written beside the figures.
Run: `python -c "import runpy; runpy.run_path('tests/bench/bench_engine.py')['main']()"`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from inference_server.engines.base import ChatMessage, SamplingParams
from inference_server.engines.llama_cpp_engine import LlamaCppEngine
from tasks.core.catalog import get_entry, load_catalog
from tasks.core.config import PROJECT_ROOT, load
from tests.bench import peers
from tests.bench.load import QUESTIONS, Round, Stream, chat_request, drive_http, drive_streams, stream_chat

BENCH_DIR = PROJECT_ROOT / ".bench"
SLOTS = 4
CONTEXT = 8192
MAX_TOKENS = 128
CONCURRENCY = (1, 2, 4, 8)
REPEATS = 2
SYSTEM_PROMPT = " ".join(f"Rule {i}: answer briefly, politely and in plain English." for i in range(160))

# A target runs one round at a given concurrency, or one conversation turn.
RunRound = Callable[[int], Awaitable[Round]]
RunTurn = Callable[[list[dict[str, str]]], Awaitable[Stream]]


def bundled_model() -> Path:
    entry = get_entry(load_catalog(load().models.catalog), "smollm2")
    path = entry.bundled.locate() if entry.bundled else None
    if path is None:
        raise SystemExit("the bundled SmolLM2 GGUF is not installed: run bootstrap.sh")
    return path


@contextmanager
def engine_target(model: Path) -> Iterator[tuple[RunRound, RunTurn]]:
    engine = LlamaCppEngine(
        model, model_name="smollm2", context_size=CONTEXT, slots=SLOTS, prefix_cache_bytes=0
    )
    engine.start()

    async def turn(messages: list[dict[str, str]], max_tokens: int = MAX_TOKENS) -> Stream:
        prompt = engine.render_chat([ChatMessage(m["role"], m["content"]) for m in messages])  # type: ignore[arg-type]
        started = time.perf_counter()
        first = 0.0
        async for chunk in engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0)):
            if chunk.text and not first:
                first = time.perf_counter() - started
            if chunk.finish_reason:
                return Stream(
                    first, time.perf_counter() - started, chunk.completion_tokens,
                    chunk.cached_tokens, chunk.prompt_tokens,
                )  # fmt: skip
        raise RuntimeError("stream ended without a final chunk")

    def run_round(concurrency: int) -> Awaitable[Round]:
        return drive_streams(
            lambda i: turn([{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]), concurrency
        )

    try:
        yield run_round, turn
    finally:
        engine.close()


@contextmanager
def http_target(url: str) -> Iterator[tuple[RunRound, RunTurn]]:
    def run_round(concurrency: int) -> Awaitable[Round]:
        return drive_http(url, concurrency, max_tokens=MAX_TOKENS)

    def turn(messages: list[dict[str, str]]) -> Awaitable[Stream]:
        return stream_chat(url, chat_request("default", messages, MAX_TOKENS))

    yield run_round, turn


@contextmanager
def llama_server_target(model: Path) -> Iterator[tuple[RunRound, RunTurn]]:
    binary = peers.build_llama_server(BENCH_DIR / "llama-server")
    port = peers.free_port()
    cmd = peers.llama_server_cmd(binary, model, port, slots=SLOTS, context=CONTEXT, threads=threads())
    with peers.running(cmd, port, BENCH_DIR / "logs" / "llama-server.log") as url, http_target(url) as target:
        yield target


@contextmanager
def llama_cpp_python_target(model: Path) -> Iterator[tuple[RunRound, RunTurn]]:
    port = peers.free_port()
    # One sequence only: its context is a slot's worth, like each of the others' slots.
    cmd = peers.llama_cpp_python_server_cmd(model, port, context=CONTEXT // SLOTS, threads=threads())
    log = BENCH_DIR / "logs" / "llama-cpp-python-server.log"
    with peers.running(cmd, port, log) as url, http_target(url) as target:
        yield target


def threads() -> int:
    return len(os.sched_getaffinity(0))


TARGETS: dict[str, Callable[[Path], AbstractContextManager[tuple[RunRound, RunTurn]]]] = {
    "engine in-process": engine_target,
    "llama.cpp llama-server": llama_server_target,
    "llama-cpp-python server": llama_cpp_python_target,
}


async def measure(run_round: RunRound, turn: RunTurn) -> dict[str, Any]:
    await run_round(1)  # warm-up: first-request costs are not what users see afterwards
    rounds = {}
    for concurrency in CONCURRENCY:
        tries = [await run_round(concurrency) for _ in range(REPEATS)]
        rounds[concurrency] = max(tries, key=lambda r: r.aggregate_tok_s)
    first_turn = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "Hello!"}]
    first = await turn(first_turn)
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "What is a good name for a cat?"},
    ]
    second = await turn(second_turn)
    return {
        "rounds": {c: r.as_dict() for c, r in rounds.items()},
        "prefix": {"first_turn": first.__dict__, "second_turn": second.__dict__},
    }


def main() -> None:
    from tasks.core.console import console, print_table

    model = bundled_model()
    out = console()
    results: dict[str, Any] = {"model": model.name, "slots": SLOTS, "context": CONTEXT, "targets": {}}
    results["load_average_before"] = os.getloadavg()
    skipped: dict[str, str] = {}
    for name, target in TARGETS.items():
        out.print(f"[bold]{name}[/]: measuring…")
        try:
            with target(model) as (run_round, turn):
                results["targets"][name] = asyncio.run(measure(run_round, turn))
        except peers.PeerUnavailable as exc:
            skipped[name] = str(exc)
            out.print(f"[yellow]skipped {name}: {exc}[/]")
    results["load_average_after"] = os.getloadavg()
    results["skipped"] = skipped

    rows = []
    for name, figures in results["targets"].items():
        for concurrency, r in figures["rounds"].items():
            rows.append((
                name, concurrency, f"{r['aggregate_tok_s']:.1f}", f"{r['per_stream_tok_s']:.1f}",
                f"{r['ttft_p50_s']:.3f}", f"{r['ttft_p95_s']:.3f}",
            ))  # fmt: skip
    print_table(
        f"SmolLM2 135M Q4_1, {SLOTS} slots, {MAX_TOKENS}-token greedy answers, best of {REPEATS}",
        ["target", "streams", "aggregate tok/s", "per-stream tok/s", "TTFT p50 s", "TTFT p95 s"],
        rows,
    )
    prefix_rows = []
    for name, figures in results["targets"].items():
        first, second = figures["prefix"]["first_turn"], figures["prefix"]["second_turn"]
        recomputed = second["prompt_tokens"] - second["cached_tokens"] if second["prompt_tokens"] else None
        prefix_rows.append((
            name, first["prompt_tokens"] or "?", second["prompt_tokens"] or "?",
            second["cached_tokens"] or "not reported", recomputed if recomputed is not None else "?",
            f"{first['ttft_s']:.3f}", f"{second['ttft_s']:.3f}",
        ))  # fmt: skip
    print_table(
        "Prefix reuse: second turn under a ~2,000-token system prompt",
        ["target", "turn 1 prompt", "turn 2 prompt", "turn 2 cached", "turn 2 recomputed",
         "TTFT turn 1 s", "TTFT turn 2 s"],
        prefix_rows,
    )  # fmt: skip
    before, after = results["load_average_before"], results["load_average_after"]
    out.print(f"load average (1 min) before {before[0]:.2f}, after {after[0]:.2f} on {threads()} cores")
    write_json(BENCH_DIR / "engine.json", results)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)
    print(f"wrote {path.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
