"""Benchmark: constrained decoding on the bundled SmolLM2 — JSON-schema-constrained vs free answers.

The same greedy prompts at 1 and 4 concurrent streams, once under a JSON Schema (the llguidance
constraint the server compiles for `response_format` / `output_config.format`) and once without; the
free answers are capped at the constrained answer's length for the same prompt, so both decode as
many tokens. The schema bounds every field (maxLength, enum, integer bounds, maxItems), so the
constrained answers end. Cells are the best of a few rounds, the two modes taking turns.

The grammar's cost per token is timed where the engine pays it, on its worker thread: each
constraint is wrapped in a timing proxy (fill_mask, accept) and the engine module's `apply_mask` in a
timing wrapper, for this benchmark process only; the product carries no timing code.

Quick by default (the engine in-process), as `inv test.bench` runs it; `BENCH_FULL=1` adds this
server over HTTP (`response_format: json_schema` vs none, 4 streams) and more rounds.
Run: `BENCH_FULL=1 .venv/bin/inv test.bench --only constrained`. Writes .bench/constrained.json.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import jsonschema
import numpy as np

from inference_server.engines import factory, llama_cpp_engine
from inference_server.engines.base import ChatMessage, Engine, SamplingParams, TokenConstraint
from inference_server.toolcalls import ConstraintPlan, compile_constraint
from tasks.core import config
from tasks.core import server as core
from tests.bench import peers
from tests.bench.load import Round, Stream, chat_request, drive_streams, stream_chat
from tests.bench.report import BENCH_DIR, full_mode, load_line, write_json

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 24},
        "role": {"enum": ["engineer", "artist", "farmer", "teacher", "doctor", "sailor"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "role", "hobbies"],
    "additionalProperties": False,
}
PEOPLE = ["a lighthouse keeper", "a baker in Paris", "a retired sea captain", "a young painter"]
SAFETY_CAP = 256  # tokens: a bounded schema ends long before this


def prompt(i: int) -> list[ChatMessage]:
    ask = (
        f"Describe {PEOPLE[i % len(PEOPLE)]} as a JSON object with the fields name, age, city, "
        "role and hobbies."
    )
    return [ChatMessage("user", ask)]


@dataclass(frozen=True)
class Plan:
    streams: tuple[int, ...]
    rounds: int
    with_server: bool


QUICK = Plan(streams=(1, 4), rounds=2, with_server=False)
FULL = Plan(streams=(1, 4), rounds=3, with_server=True)


@dataclass
class MaskTimings:
    """Seconds the grammar took on the engine's worker, summed over every constrained token."""

    fill_s: float = 0.0
    apply_s: float = 0.0
    accept_s: float = 0.0
    masks: int = 0  # fill_mask calls that wrote a mask
    applied: int = 0
    accepted: int = 0

    def per_token_us(self) -> dict[str, float]:
        return {
            "fill_mask_us": 1e6 * self.fill_s / max(self.masks, 1),
            "apply_mask_us": 1e6 * self.apply_s / max(self.applied, 1),
            "accept_us": 1e6 * self.accept_s / max(self.accepted, 1),
        }


class TimedConstraint:
    """A TokenConstraint that times its inner one's calls (it runs on the engine's worker thread)."""

    def __init__(self, inner: TokenConstraint, timings: MaskTimings) -> None:
        self.inner = inner
        self.timings = timings

    def fill_mask(self, bitmask: Any) -> bool:
        started = time.perf_counter()
        wrote = self.inner.fill_mask(bitmask)
        self.timings.fill_s += time.perf_counter() - started
        self.timings.masks += wrote
        return wrote

    def accept(self, token: int) -> None:
        started = time.perf_counter()
        self.inner.accept(token)
        self.timings.accept_s += time.perf_counter() - started
        self.timings.accepted += 1

    def stopped(self) -> bool:
        return self.inner.stopped()


@contextlib.contextmanager
def timed_apply_mask(timings: MaskTimings) -> Iterator[None]:
    """The engine module's apply_mask, timed while the benchmark runs."""
    original = llama_cpp_engine.apply_mask

    def timed(logits: np.ndarray, bitmask: np.ndarray) -> None:
        started = time.perf_counter()
        original(logits, bitmask)
        timings.apply_s += time.perf_counter() - started
        timings.applied += 1

    llama_cpp_engine.apply_mask = timed
    try:
        yield
    finally:
        llama_cpp_engine.apply_mask = original


Run = Callable[[int, int, bool], Awaitable[Round]]  # (streams, round, constrained)


def engine_runner(engine: Engine, timings: MaskTimings, lengths: dict[int, int], answers: list[str]) -> Run:
    plan = ConstraintPlan(kind="json", schema=SCHEMA)
    tokenizer = engine.grammar_tokenizer()

    async def one(i: int, constrained: bool) -> Stream:
        tokens = engine.chat_tokens(prompt(i))
        constraint = TimedConstraint(compile_constraint(plan, tokenizer), timings) if constrained else None
        params = SamplingParams(max_tokens=SAFETY_CAP if constrained else lengths[i], temperature=0)
        started = time.perf_counter()
        first = 0.0
        text = ""
        async for chunk in engine.generate(tokens, params, constraint):
            text += chunk.text
            if chunk.text and not first:
                first = time.perf_counter() - started
            if chunk.finish_reason:
                if constrained:
                    lengths.setdefault(i, chunk.completion_tokens)
                    answers.append(text)
                return Stream(first, time.perf_counter() - started, chunk.completion_tokens)
        raise RuntimeError("stream ended without a final chunk")

    async def run(streams: int, _round: int, constrained: bool) -> Round:
        return await drive_streams(lambda i: one(i, constrained), streams)

    return run


def server_runner(served: peers.Served, lengths: dict[int, int]) -> Run:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": SCHEMA, "strict": True},
    }

    def one(i: int, constrained: bool) -> Awaitable[Stream]:
        messages = [{"role": m.role, "content": m.content} for m in prompt(i)]
        body = chat_request(served.model, messages, SAFETY_CAP if constrained else lengths[i])
        if constrained:
            body["response_format"] = response_format
        return stream_chat(served.url, body, headers=served.headers)

    async def run(streams: int, _round: int, constrained: bool) -> Round:
        return await drive_streams(lambda i: one(i, constrained), streams)

    return run


FREE, CONSTRAINED = "unconstrained", "json_schema"


async def measure(run: Run, plan: Plan, streams: tuple[int, ...]) -> dict[str, dict[int, Round]]:
    """Best round per (mode, streams); the constrained mode runs first once, so the free answers
    know their lengths, then the modes take turns."""
    await run(max(streams), -1, True)
    await run(max(streams), -1, False)
    best: dict[str, dict[int, Round]] = {FREE: {}, CONSTRAINED: {}}
    for n in streams:
        for r in range(plan.rounds):
            order = (True, False) if r % 2 else (False, True)
            for constrained in order:
                result = await run(n, r, constrained)
                mode = CONSTRAINED if constrained else FREE
                if n not in best[mode] or result.aggregate_tok_s > best[mode][n].aggregate_tok_s:
                    best[mode][n] = result
    return best


def main() -> None:
    from tasks.core.console import console, print_table

    plan = FULL if full_mode() else QUICK
    settings = core.served_settings(config.load())
    out = console()
    load_before = os.getloadavg()
    timings = MaskTimings()
    lengths: dict[int, int] = {}
    answers: list[str] = []
    figures: dict[str, dict[str, dict[int, Round]]] = {}
    engine = factory.create(settings.default, settings)
    engine.start()
    try:
        out.print("[bold]engine[/]: measuring…")
        with timed_apply_mask(timings):
            figures["engine"] = asyncio.run(
                measure(engine_runner(engine, timings, lengths, answers), plan, plan.streams)
            )
    finally:
        engine.close()
    invalid = [a for a in answers if not valid(a)]
    if plan.with_server:
        out.print("[bold]server[/]: measuring…")
        with peers.this_server(settings) as served:
            figures["server"] = asyncio.run(measure(server_runner(served, lengths), plan, (4,)))
    load_after = os.getloadavg()

    print_table(
        f"Constrained decoding on {settings.default_model}: greedy answers to {len(PEOPLE)} prompts, "
        f"best of {plan.rounds}",
        ["target", "mode", "streams", "tokens", "aggregate tok/s", "per-stream tok/s", "TTFT p50 s"],
        [
            (
                target,
                mode,
                n,
                r.tokens,
                f"{r.aggregate_tok_s:.1f}",
                f"{r.per_stream_tok_s:.1f}",
                f"{r.ttft_p50_s:.3f}",
            )
            for target, modes in figures.items()
            for mode, rounds in modes.items()
            for n, r in rounds.items()
        ],
    )
    per_token = timings.per_token_us()
    token_us = 1e6 / figures["engine"][CONSTRAINED][1].per_stream_tok_s
    print_table(
        "Grammar cost per constrained token, on the engine's worker",
        ["fill_mask µs", "apply_mask µs", "accept µs", "masks timed", "one token at 1 stream µs"],
        [(f"{per_token['fill_mask_us']:.0f}", f"{per_token['apply_mask_us']:.0f}",
          f"{per_token['accept_us']:.0f}", timings.masks, f"{token_us:.0f}")],
    )  # fmt: skip
    checks = check_targets(figures, invalid, len(answers))
    print_table(
        "Targets", ["what", "measured", "goal", "met"], [(*c[:3], "yes" if c[3] else "NO") for c in checks]
    )
    out.print(load_line(load_before, load_after))
    write_json(
        BENCH_DIR / "constrained.json",
        {
            "model": settings.default_model,
            "slots": settings.default.slots,
            "plan": asdict(plan),
            "schema": SCHEMA,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "targets": {
                target: {mode: {n: r.as_dict() for n, r in rounds.items()} for mode, rounds in modes.items()}
                for target, modes in figures.items()
            },
            "mask_timings": {**asdict(timings), **per_token},
            "invalid_answers": invalid,
            "checks": [dict(zip(("what", "measured", "goal", "met"), c, strict=True)) for c in checks],
        },
    )


def valid(answer: str) -> bool:
    try:
        jsonschema.validate(json.loads(answer), SCHEMA)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def check_targets(
    figures: dict[str, dict[str, dict[int, Round]]], invalid: list[str], answered: int
) -> list[tuple[str, str, str, bool]]:
    """Issue 11's target (constrained >= 0.9x free at 4 streams), and that every answer validated."""
    checks = []
    for target, modes in figures.items():
        ratio = modes[CONSTRAINED][4].aggregate_tok_s / modes[FREE][4].aggregate_tok_s
        checks.append((f"{target}: constrained / free, 4 streams", f"{ratio:.2f}x", ">= 0.9x", ratio >= 0.9))
    checks.append(
        ("engine: constrained answers valid", f"{answered - len(invalid)} of {answered}", "all", not invalid)
    )
    return checks


if __name__ == "__main__":
    main()
