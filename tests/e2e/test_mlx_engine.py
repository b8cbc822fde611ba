"""MlxEngine on the converted SmolLM2 (mlx on CPU here: a few tokens per test).

No test double: mlx's CPU backend runs the same mlx-lm code that a Mac runs on Metal. What these
tests cannot reach is the Metal GPU itself (and mlx-lm's wired-memory limit, a no-op on CPU).
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from inference_server.engines.base import ChatMessage, Chunk, EngineError, PromptTooLong, SamplingParams
from inference_server.engines.mlx_engine import MlxEngine
from tests.fixtures.mlx import MLX_TEST_CONTEXT

GREEDY = SamplingParams(max_tokens=5, temperature=0.0)
FRANCE = [ChatMessage("user", "What is the capital of France?")]


def collect(engine: MlxEngine, prompt: str, params: SamplingParams) -> list[Chunk]:
    async def run() -> list[Chunk]:
        return [chunk async for chunk in engine.generate(engine.tokenize(prompt), params)]

    return asyncio.run(run())


def test_chat_template_comes_from_the_model(mlx_engine: MlxEngine) -> None:
    prompt = mlx_engine.render_chat(FRANCE)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_streams_greedy_text_in_pieces_then_a_final_chunk(mlx_engine: MlxEngine) -> None:
    prompt = mlx_engine.render_chat(FRANCE)
    chunks = collect(mlx_engine, prompt, GREEDY)
    assert "".join(c.text for c in chunks) == "The capital of France is"
    assert len(chunks) >= 4
    assert all(c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert (last.finish_reason, last.completion_tokens) == ("length", 5)
    assert last.prompt_tokens == len(mlx_engine.tokenize(prompt))


def test_end_of_turn_finishes_with_stop(mlx_engine: MlxEngine) -> None:
    chunks = collect(mlx_engine, mlx_engine.render_chat(FRANCE), SamplingParams(max_tokens=20, temperature=0))
    assert "".join(c.text for c in chunks) == "The capital of France is Paris."
    assert (chunks[-1].finish_reason, chunks[-1].completion_tokens) == ("stop", 7)


def test_a_seed_reproduces_its_sample_even_beside_another_stream(mlx_engine: MlxEngine) -> None:
    """Each request samples from its own random key, so a neighbour in the batch changes nothing."""
    params = SamplingParams(max_tokens=4, temperature=1.0, top_p=0.9, seed=1234)
    prompt = mlx_engine.render_chat([ChatMessage("user", "Tell me a story.")])

    async def beside_a_neighbour() -> list[Chunk]:
        neighbour = mlx_engine.generate(
            mlx_engine.tokenize(mlx_engine.render_chat(FRANCE)), SamplingParams(max_tokens=6, temperature=0)
        )
        both = await asyncio.gather(
            _drain(mlx_engine.generate(mlx_engine.tokenize(prompt), params)), _drain(neighbour)
        )
        return both[0]

    alone = collect(mlx_engine, prompt, params)
    beside = asyncio.run(asyncio.wait_for(beside_a_neighbour(), timeout=120))
    assert "".join(c.text for c in alone) == "".join(c.text for c in beside)
    assert alone[-1].completion_tokens == 4


def test_prompt_longer_than_context_is_refused_before_streaming(mlx_engine: MlxEngine) -> None:
    prompt = "word " * (MLX_TEST_CONTEXT + 10)
    with pytest.raises(PromptTooLong) as caught:
        collect(mlx_engine, prompt, GREEDY)
    tokens = len(mlx_engine.tokenize(prompt))
    assert str(caught.value) == f"prompt is too long: {tokens} tokens > {MLX_TEST_CONTEXT} maximum"


def test_generation_stops_at_the_context_limit(mlx_smollm2_dir: Path) -> None:
    engine = MlxEngine(mlx_smollm2_dir, model_name="smollm2-mlx", context_size=24)
    engine.start()
    try:
        prompt = "word " * 20
        room = 24 - len(engine.tokenize(prompt))
        chunks = collect(engine, prompt, SamplingParams(max_tokens=50, temperature=0))
    finally:
        engine.close()
    assert 0 < room < 50
    assert (chunks[-1].finish_reason, chunks[-1].completion_tokens) == ("length", room)


def test_closing_the_stream_cancels_and_frees_the_worker(mlx_engine: MlxEngine) -> None:
    """Without cancellation the abandoned request would run for its whole budget (minutes here)."""
    prompt = mlx_engine.render_chat([ChatMessage("user", "Write a very long essay about rivers.")])

    async def run() -> list[Chunk]:
        stream = mlx_engine.generate(
            mlx_engine.tokenize(prompt), SamplingParams(max_tokens=MLX_TEST_CONTEXT, temperature=0)
        )
        assert isinstance(stream, AsyncIterator)
        await anext(stream)
        await stream.aclose()  # type: ignore[attr-defined]
        follow_up = mlx_engine.generate(
            mlx_engine.tokenize(prompt), SamplingParams(max_tokens=2, temperature=0)
        )
        return await asyncio.wait_for(_drain(follow_up), timeout=60)

    chunks = asyncio.run(run())
    assert chunks[-1].finish_reason == "length"


async def _drain(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


def test_concurrent_streams_each_get_their_own_answer(mlx_engine: MlxEngine) -> None:
    """Two streams decoded in one batch; each gets exactly the answer it gets alone."""
    prompt = mlx_engine.render_chat(FRANCE)
    params = SamplingParams(max_tokens=3, temperature=0)

    async def run() -> list[list[Chunk]]:
        streams = [mlx_engine.generate(mlx_engine.tokenize(prompt), params) for _ in range(2)]
        return await asyncio.wait_for(asyncio.gather(*map(_drain, streams)), timeout=120)

    for chunks in asyncio.run(run()):
        assert "".join(c.text for c in chunks) == "The capital of"
        assert chunks[-1].completion_tokens == 3


def test_a_new_request_joins_the_running_batch_instead_of_waiting(mlx_engine: MlxEngine) -> None:
    """Served in turn, the short request would wait for all 40 tokens of the long one; batched, it
    joins between two decode steps and finishes first."""
    essay = mlx_engine.render_chat([ChatMessage("user", "Write a very long essay about rivers.")])
    finished: list[str] = []

    async def long_request(started: asyncio.Event) -> None:
        async for chunk in mlx_engine.generate(
            mlx_engine.tokenize(essay), SamplingParams(max_tokens=40, temperature=0)
        ):
            started.set()
            if chunk.finish_reason is not None:
                finished.append(f"long: {chunk.finish_reason}")

    async def run() -> list[Chunk]:
        started = asyncio.Event()
        long_task = asyncio.create_task(long_request(started))
        await started.wait()
        short = await _drain(
            mlx_engine.generate(
                mlx_engine.tokenize(mlx_engine.render_chat(FRANCE)),
                SamplingParams(max_tokens=3, temperature=0),
            )
        )
        finished.append(f"short: {short[-1].finish_reason}")
        await long_task
        return short

    short = asyncio.run(asyncio.wait_for(run(), timeout=180))
    assert finished == ["short: length", "long: length"]
    assert "".join(c.text for c in short) == "The capital of"


def _stream_interrupted_after_first_chunk(
    engine: MlxEngine, prompt: str, interrupt: Callable[[], object]
) -> list[Chunk]:
    """A long greedy answer, with `interrupt` called once its first chunk has arrived."""

    async def run() -> list[Chunk]:
        chunks = []
        async for chunk in engine.generate(
            engine.tokenize(prompt), SamplingParams(max_tokens=200, temperature=0)
        ):
            chunks.append(chunk)
            if len(chunks) == 1:
                interrupt()
        return chunks

    return asyncio.run(asyncio.wait_for(run(), timeout=60))


def test_close_cancels_the_request_in_flight(mlx_smollm2_dir: Path) -> None:
    engine = MlxEngine(mlx_smollm2_dir, model_name="smollm2-mlx", context_size=MLX_TEST_CONTEXT)
    engine.start()
    assert engine.healthy()
    prompt = engine.render_chat([ChatMessage("user", "Write a very long essay about rivers.")])

    chunks = _stream_interrupted_after_first_chunk(
        engine, prompt, threading.Thread(target=engine.close).start
    )
    assert chunks[-1].finish_reason == "cancelled"
    assert chunks[-1].completion_tokens < 200
    assert not engine.healthy()
    with pytest.raises(EngineError, match="not running"):
        collect(engine, prompt, GREEDY)


def test_a_directory_that_is_not_a_model_fails_to_start(tmp_path: Path) -> None:
    engine = MlxEngine(tmp_path, model_name="nothing", context_size=MLX_TEST_CONTEXT)
    with pytest.raises(EngineError, match=f"cannot load MLX model {tmp_path}"):
        engine.start()
    assert not engine.healthy()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the kill
def test_a_dead_worker_ends_streams_with_error_and_reports_unhealthy(mlx_smollm2_dir: Path) -> None:
    """The worker is killed the way a crash would end it: an exception raised inside its thread."""
    engine = MlxEngine(mlx_smollm2_dir, model_name="doomed", context_size=MLX_TEST_CONTEXT)
    engine.start()
    [worker] = [t for t in threading.enumerate() if t.name == "mlx-engine doomed"]
    prompt = engine.render_chat([ChatMessage("user", "Write a very long essay about rivers.")])

    chunks = _stream_interrupted_after_first_chunk(
        engine,
        prompt,
        lambda: ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(worker.ident), ctypes.py_object(SystemExit)
        ),
    )
    worker.join(timeout=10)
    assert chunks[-1].finish_reason == "error"
    assert not engine.healthy()


def test_a_json_schema_constrains_mlx_answers_too(mlx_smollm2_dir: Path) -> None:
    """The grammar rides mlx-lm's logits processors: sampled at temperature 1, every answer parses
    and validates, and a batch neighbour without a grammar is untouched."""
    import json

    import jsonschema

    from inference_server.toolcalls import ConstraintPlan, compile_constraint

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}, "rank": {"enum": [1, 2, 3]}},
        "required": ["city", "rank"],
        "additionalProperties": False,
    }
    engine = MlxEngine(mlx_smollm2_dir, model_name="smollm2-mlx", context_size=512)
    engine.start()
    try:
        prompt = engine.chat_tokens([ChatMessage("user", "Name a city and rank it as JSON.")])
        plan = ConstraintPlan(kind="json", schema=schema, max_tokens=48)

        async def answers() -> list[str]:
            async def one(seed: int) -> str:
                constraint = compile_constraint(plan, engine.grammar_tokenizer())
                params = SamplingParams(max_tokens=48, temperature=1.0, seed=seed)
                chunks = [c async for c in engine.generate(prompt, params, constraint)]
                assert chunks[-1].finish_reason == "stop", chunks[-1]
                return "".join(c.text for c in chunks)

            free = engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0))
            results = await asyncio.gather(*(one(seed) for seed in range(3)), _drain(free))
            return [r for r in results if isinstance(r, str)]

        for text in asyncio.run(answers()):
            jsonschema.validate(json.loads(text), schema)
    finally:
        engine.close()


def test_embeddings_are_mean_pooled_and_a_batch_equals_its_parts(mlx_engine: MlxEngine) -> None:
    short, long = (
        mlx_engine.tokenize("A cat."),
        mlx_engine.tokenize("Rain is expected over the hills tomorrow."),
    )

    async def run() -> tuple[list[list[float]], list[list[float]]]:
        return await mlx_engine.embed([short, long]), await mlx_engine.embed([short])

    together, alone = asyncio.run(run())
    assert len(together) == 2 and len(together[0]) == len(together[1]) > 0
    assert together[0] == pytest.approx(alone[0], abs=1e-3)  # the shorter one's padding changed nothing
    assert together[0] != pytest.approx(together[1], abs=1e-3)
    with pytest.raises(PromptTooLong):
        asyncio.run(mlx_engine.embed([[1] * (MLX_TEST_CONTEXT + 1)]))
