"""Benchmark: serving the bundled SmolLM2 — the engine in-process, this server, and peer servers.

Every target gets the server settings from invoke.yaml (slots, context, threads): greedy answers,
N streams started together (a fresh connection per request for servers), each cell the best of a few
rounds, one target decoding at a time. Single-stream rounds of the engine and the server then
alternate, for their ratio on a shared, noisy machine. A two-turn conversation under a long system
prompt shows prefix reuse: tokens recomputed on the second turn, and both turns' time to first token
(~1,850 tokens in quick mode; ~6,000 in full mode, an agent's turn: the slots share one KV cache, so
one request may use the whole context). A last table checks the serving-performance issue's targets.

Quick by default, as `inv test.bench` runs it in CI (engine and server, 1 and 4 streams, about a
minute). `BENCH_FULL=1` (or `--full`) adds the peers: llama.cpp's `llama-server`, built once from the
llama.cpp that the llama-cpp-python sdist vendors into .bench/llama-server (about 10 minutes on two
cores, then cached), and llama-cpp-python's bundled server; at 1, 2, 4 and 8 streams.
Run: `BENCH_FULL=1 .venv/bin/inv test.bench --only serving`.
Writes .bench/serving.json.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from inference_server.engines import factory
from inference_server.engines.base import ChatMessage, SamplingParams
from inference_server.settings import ServerSettings
from tasks.core import config
from tasks.core import server as core
from tests.bench import peers
from tests.bench.load import QUESTIONS, Round, Stream, chat_request, drive_streams, stream_chat
from tests.bench.report import BENCH_DIR, full_mode, load_line, threads, write_json
from tests.ports import free_port

Messages = list[dict[str, str]]


def conversation(rules: int) -> tuple[Messages, Messages]:
    """Two turns under a system prompt of `rules` rules (~14.5 tokens each)."""
    system = " ".join(f"Rule {i}: answer briefly, politely and in plain English." for i in range(rules))
    first = [{"role": "system", "content": system}, {"role": "user", "content": "Hello!"}]
    second = [
        *first,
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "What is a good name for a cat?"},
    ]
    return first, second


@dataclass(frozen=True)
class Plan:
    concurrency: tuple[int, ...]
    repeats: int
    max_tokens: int
    pairs: int  # alternating engine / server single-stream rounds for their ratio
    with_peers: bool
    system_rules: int  # the prefix-reuse conversation's system prompt


QUICK = Plan(concurrency=(1, 4), repeats=2, max_tokens=64, pairs=3, with_peers=False, system_rules=128)
FULL = Plan(concurrency=(1, 2, 4, 8), repeats=2, max_tokens=128, pairs=6, with_peers=True, system_rules=410)


@dataclass(frozen=True)
class Target:
    """What the benchmark does to a target: a round of N concurrent streams, or one chat turn."""

    run_round: Callable[[int], Awaitable[Round]]
    turn: Callable[[Messages], Awaitable[Stream]]


@contextmanager
def engine_target(settings: ServerSettings, plan: Plan) -> Iterator[Target]:
    engine = factory.create(settings.default, settings)
    engine.start()
    params = SamplingParams(max_tokens=plan.max_tokens, temperature=0)

    async def turn(messages: Messages) -> Stream:
        tokens = engine.chat_tokens([ChatMessage(m["role"], m["content"]) for m in messages])  # type: ignore[arg-type]
        started = time.perf_counter()
        first = 0.0
        async for chunk in engine.generate(tokens, params):
            if chunk.text and not first:
                first = time.perf_counter() - started
            if chunk.finish_reason:
                return Stream(
                    first, time.perf_counter() - started, chunk.completion_tokens,
                    chunk.cached_tokens, chunk.prompt_tokens,
                )  # fmt: skip
        raise RuntimeError("stream ended without a final chunk")

    try:
        yield Target(lambda n: drive_streams(lambda i: turn(question(i)), n), turn)
    finally:
        engine.close()


def http_target(served: peers.Served, plan: Plan) -> Target:
    def turn(messages: Messages) -> Awaitable[Stream]:
        body = chat_request(served.model, messages, plan.max_tokens)
        return stream_chat(served.url, body, headers=served.headers)

    return Target(lambda n: drive_streams(lambda i: turn(question(i)), n), turn)


@contextmanager
def server_target(settings: ServerSettings, plan: Plan) -> Iterator[Target]:
    with peers.this_server(settings) as served:
        yield http_target(served, plan)


@contextmanager
def llama_server_target(settings: ServerSettings, plan: Plan) -> Iterator[Target]:
    with peers.llama_server(settings, BENCH_DIR, threads(settings)) as served:
        yield http_target(served, plan)


@contextmanager
def llama_cpp_python_target(settings: ServerSettings, plan: Plan) -> Iterator[Target]:
    port = free_port()
    # One sequence at a time over the whole context: as much as one of our requests may use.
    cmd = peers.llama_cpp_python_server_cmd(
        settings.default.path, port, context=settings.default.context_size, threads=threads(settings)
    )
    with peers.running(cmd, port, BENCH_DIR / "logs" / "llama-cpp-python-server.log") as url:
        yield http_target(peers.Served(url), plan)


ENGINE, SERVER = "engine", "server"
PEERS: dict[str, Callable[[ServerSettings, Plan], AbstractContextManager[Target]]] = {
    "llama-server": llama_server_target,
    "llama-cpp-python": llama_cpp_python_target,
}
LLAMA_SERVER, LLAMA_CPP_PYTHON = PEERS


def question(i: int) -> Messages:
    return [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


async def measure(target: Target, plan: Plan) -> dict[str, Any]:
    await target.run_round(1)  # warm-up: first-request costs are not what users see afterwards
    rounds = {}
    for concurrency in plan.concurrency:
        tries = [await target.run_round(concurrency) for _ in range(plan.repeats)]
        rounds[concurrency] = max(tries, key=lambda r: r.aggregate_tok_s).as_dict()
    first_turn, second_turn = conversation(plan.system_rules)
    first = await target.turn(first_turn)
    second = await target.turn(second_turn)
    return {"rounds": rounds, "prefix": {"first_turn": asdict(first), "second_turn": asdict(second)}}


async def paired_single_stream(engine: Target, server: Target, pairs: int) -> list[float]:
    """Server / engine tok/s of single-stream rounds run back to back, which goes first alternating,
    so that a busy moment of the shared machine hits both alike (both are loaded, one decodes)."""
    ratios = []
    for i in range(pairs):
        if i % 2:
            served = await server.run_round(1)
            alone = await engine.run_round(1)
        else:
            alone = await engine.run_round(1)
            served = await server.run_round(1)
        ratios.append(served.aggregate_tok_s / alone.aggregate_tok_s)
    return ratios


def check_targets(figures: dict[str, Any], server_ratios: list[float]) -> list[tuple[str, str, str, bool]]:
    """The issue's targets that these figures can answer: (what, measured, goal, met)."""

    def tok_s(name: str, streams: int) -> float:
        return float(figures[name]["rounds"][streams]["aggregate_tok_s"])

    ratio = statistics.median(server_ratios)
    checks = [("server / engine, 1 stream (median of pairs)", f"{ratio:.2f}x", ">= 0.95x", ratio >= 0.95)]
    ttft = float(figures[SERVER]["rounds"][4]["ttft_p50_s"])  # both plans run 4 streams
    checks.append(("server TTFT p50 at 4 streams", f"{ttft:.3f} s", "<= 0.2 s", ttft <= 0.2))
    for peer, goal in ((LLAMA_SERVER, 1.0), (LLAMA_CPP_PYTHON, 3.0)):
        if peer in figures:
            ratio = tok_s(SERVER, 4) / tok_s(peer, 4)
            checks.append((f"server / {peer}, 4 streams", f"{ratio:.2f}x", f">= {goal:.1f}x", ratio >= goal))
    second = figures[SERVER]["prefix"]["second_turn"]
    share = (second["prompt_tokens"] - second["cached_tokens"]) / max(second["prompt_tokens"], 1)
    checks.append(("server 2nd turn: prompt recomputed", f"{share:.1%}", "<= 10%", share <= 0.10))
    return checks


def main() -> None:
    from tasks.core.console import console, print_table

    plan = FULL if full_mode() else QUICK
    settings = core.served_settings(config.load())
    out = console()
    figures: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    load_before = os.getloadavg()
    with engine_target(settings, plan) as engine, server_target(settings, plan) as server:
        for name, target in ((ENGINE, engine), (SERVER, server)):
            out.print(f"[bold]{name}[/]: measuring…")
            figures[name] = asyncio.run(measure(target, plan))
        out.print(f"[bold]{SERVER} / {ENGINE}[/]: {plan.pairs} pairs of single-stream rounds…")
        server_ratios = asyncio.run(paired_single_stream(engine, server, plan.pairs))
    for name, peer in PEERS.items() if plan.with_peers else ():
        out.print(f"[bold]{name}[/]: measuring…")
        try:
            with peer(settings, plan) as target:
                figures[name] = asyncio.run(measure(target, plan))
        except (peers.PeerUnavailable, httpx.HTTPError) as exc:  # a peer's failure is not ours
            skipped[name] = str(exc) or type(exc).__name__
            out.print(f"[yellow]skipped {name}: {exc}[/]")
    load_after = os.getloadavg()

    print_table(
        f"{settings.default_model} ({settings.default.path.name}), {settings.default.slots} slots, "
        f"{plan.max_tokens}-token greedy answers, best of {plan.repeats}",
        ["target", "streams", "aggregate tok/s", "per-stream tok/s", "TTFT p50 s", "TTFT p95 s"],
        [
            (name, n, f"{r['aggregate_tok_s']:.1f}", f"{r['per_stream_tok_s']:.1f}",
             f"{r['ttft_p50_s']:.3f}", f"{r['ttft_p95_s']:.3f}")
            for name, result in figures.items()
            for n, r in result["rounds"].items()
        ],
    )  # fmt: skip
    print_table(
        f"Prefix reuse: second turn of a conversation under a {plan.system_rules}-rule system prompt",
        ["target", "turn 1 prompt", "turn 2 prompt", "turn 2 cached", "turn 2 recomputed",
         "TTFT turn 1 s", "TTFT turn 2 s"],
        [prefix_row(name, result["prefix"]) for name, result in figures.items()],
    )  # fmt: skip
    checks = check_targets(figures, server_ratios)
    print_table(
        "Targets", ["what", "measured", "goal", "met"], [(*c[:3], "yes" if c[3] else "NO") for c in checks]
    )
    out.print(load_line(load_before, load_after))
    for name, reason in skipped.items():
        out.print(f"[yellow]skipped {name}: {reason}[/]")
    write_json(
        BENCH_DIR / "serving.json",
        {
            "model": settings.default_model,
            "slots": settings.default.slots,
            "context_size": settings.default.context_size,
            "plan": asdict(plan),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "cores": len(os.sched_getaffinity(0)),
            "targets": figures,
            "server_over_engine_single_stream": server_ratios,
            "skipped": skipped,
            "checks": [dict(zip(("what", "measured", "goal", "met"), c, strict=True)) for c in checks],
        },
    )


def prefix_row(name: str, prefix: dict[str, dict[str, Any]]) -> tuple[Any, ...]:
    first, second = prefix["first_turn"], prefix["second_turn"]
    reported = second["prompt_tokens"] > 0 and second["cached_tokens"] > 0
    recomputed = second["prompt_tokens"] - second["cached_tokens"]
    return (
        name,
        first["prompt_tokens"] or "?",
        second["prompt_tokens"] or "?",
        second["cached_tokens"] if reported else "not reported",
        f"{recomputed} ({recomputed / second['prompt_tokens']:.1%})" if reported else "?",
        f"{first['ttft_s']:.3f}",
        f"{second['ttft_s']:.3f}",
    )


if __name__ == "__main__":
    main()
