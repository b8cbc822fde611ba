"""The GGUF engine in-process on the bundled SmolLM2: batching, cancellation, prefix reuse, health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference_server.engines.base import ChatMessage, Chunk, EngineError, PromptTooLong, SamplingParams
from inference_server.engines.llama_cpp_engine import LlamaCppEngine
from tasks.core.catalog import get_entry, load_catalog
from tasks.core.config import load

GREEDY = SamplingParams(max_tokens=12, temperature=0)
QUESTIONS = ["What is the capital of France?", "Name a colour.", "Count to five.", "Say hello in Spanish."]


def bundled_model() -> Path:
    entry = get_entry(load_catalog(load().models.catalog), "smollm2")
    assert entry.bundled is not None
    path = entry.bundled.locate()
    assert path is not None, "the bundled SmolLM2 GGUF is not installed"
    return path


def make_engine(**overrides: int) -> LlamaCppEngine:
    settings = {"context_size": 8192, "slots": 4, "prefix_cache_bytes": 64 << 20} | overrides
    engine = LlamaCppEngine(bundled_model(), model_name="smollm2", **settings)
    engine.start()
    return engine


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    engine = make_engine()
    yield engine
    engine.close()


def ask(engine: LlamaCppEngine, question: str) -> str:
    return engine.render_chat([ChatMessage("user", question)])


async def collect(engine: LlamaCppEngine, prompt: str, params: SamplingParams = GREEDY) -> list[Chunk]:
    return [chunk async for chunk in engine.generate(prompt, params)]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


def test_chat_template_keeps_the_models_default_system_prompt(engine: LlamaCppEngine) -> None:
    prompt = ask(engine, "Hi")
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_greedy_answer_ends_with_usage(engine: LlamaCppEngine) -> None:
    chunks = asyncio.run(collect(engine, ask(engine, QUESTIONS[0])))
    final = chunks[-1]
    assert "Paris" in text_of(chunks) or text_of(chunks).strip()
    assert final.finish_reason in ("stop", "length")
    assert final.prompt_tokens == len(engine.tokenize(ask(engine, QUESTIONS[0])))
    assert 0 < final.completion_tokens <= GREEDY.max_tokens
    assert all(chunk.finish_reason is None for chunk in chunks[:-1])


def test_concurrent_greedy_streams_match_each_prompt_run_alone(engine: LlamaCppEngine) -> None:
    prompts = [ask(engine, q) for q in QUESTIONS]

    async def scenario() -> tuple[list[str], list[str]]:
        alone = [text_of(await collect(engine, p)) for p in prompts]
        together = await asyncio.gather(*(collect(engine, p) for p in prompts))
        return alone, [text_of(chunks) for chunks in together]

    alone, together = asyncio.run(scenario())
    assert together == alone
    assert len(set(alone)) > 1


def test_same_seed_gives_the_same_sample_and_another_seed_differs(engine: LlamaCppEngine) -> None:
    prompt = ask(engine, "Write a sentence about the sea.")

    def sample(seed: int) -> str:
        params = SamplingParams(max_tokens=16, temperature=1.0, seed=seed)
        return text_of(asyncio.run(collect(engine, prompt, params)))

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))


def test_closing_the_stream_cancels_and_frees_the_slot() -> None:
    engine = make_engine(slots=1, context_size=2048)
    try:

        async def scenario() -> list[Chunk]:
            stream = engine.generate(ask(engine, "Tell me a long story."), SamplingParams(max_tokens=2000))
            await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
            # The only slot must be free again: a second request gets an answer at once.
            return await asyncio.wait_for(collect(engine, ask(engine, "Hi")), timeout=30)

        chunks = asyncio.run(scenario())
        assert chunks[-1].finish_reason in ("stop", "length")
    finally:
        engine.close()


def test_second_turn_with_a_long_system_prompt_reuses_its_prefix() -> None:
    engine = make_engine(slots=2, context_size=8192)
    system = " ".join(f"Rule {i}: answer briefly and politely." for i in range(200))
    first_turn = [ChatMessage("system", system), ChatMessage("user", "Hello!")]
    assert len(engine.tokenize(engine.render_chat(first_turn))) > 2000

    async def scenario() -> tuple[Chunk, Chunk]:
        first = await collect(engine, engine.render_chat(first_turn))
        await collect(engine, ask(engine, "Another user's unrelated question."))
        second_turn = [
            *first_turn,
            ChatMessage("assistant", text_of(first)),
            ChatMessage("user", "And goodbye?"),
        ]
        second = await collect(engine, engine.render_chat(second_turn))
        return first[-1], second[-1]

    try:
        first, second = asyncio.run(scenario())
    finally:
        engine.close()
    assert first.cached_tokens == 0
    assert second.cached_tokens >= first.prompt_tokens
    assert second.prompt_tokens - second.cached_tokens <= 0.10 * second.prompt_tokens


def test_prompt_longer_than_a_slot_is_refused_with_both_counts(engine: LlamaCppEngine) -> None:
    prompt = "word " * (engine.info.context_size + 10)
    with pytest.raises(PromptTooLong) as caught:
        asyncio.run(collect(engine, prompt))
    assert caught.value.prompt_tokens > caught.value.limit
    assert caught.value.limit == engine.info.context_size - 1
    assert str(caught.value).startswith("prompt is too long: ")


def test_worker_death_turns_health_off_and_ends_streams_with_error() -> None:
    engine = make_engine(slots=1, context_size=2048)
    try:
        assert engine.healthy()

        async def scenario() -> list[Chunk]:
            stream = engine.generate(ask(engine, "Tell me a long story."), SamplingParams(max_tokens=2000))
            first = await anext(stream)
            engine.kill_worker("injected fatal error")
            return [first] + [chunk async for chunk in stream]

        chunks = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
        assert chunks[-1].finish_reason == "error"
        deadline = time.monotonic() + 5
        while engine.healthy() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not engine.healthy()
        with pytest.raises(EngineError, match="injected fatal error"):
            asyncio.run(collect(engine, ask(engine, "Hi")))
    finally:
        engine.close()


def test_prefix_evicted_from_its_slot_is_restored_from_the_prefix_store() -> None:
    engine = make_engine(slots=1, context_size=2048)

    def conversation(topic: str) -> list[ChatMessage]:
        rules = " ".join(f"Rule {i}: only talk about {topic}." for i in range(60))
        return [ChatMessage("system", rules), ChatMessage("user", f"Tell me about {topic}.")]

    async def scenario() -> tuple[Chunk, Chunk]:
        boats = await collect(engine, engine.render_chat(conversation("boats")))
        await collect(engine, engine.render_chat(conversation("trains")))  # takes the only slot
        again = [
            *conversation("boats"),
            ChatMessage("assistant", text_of(boats)),
            ChatMessage("user", "More?"),
        ]
        return boats[-1], (await collect(engine, engine.render_chat(again)))[-1]

    try:
        first, second = asyncio.run(scenario())
    finally:
        engine.close()
    assert first.prompt_tokens > 256
    assert second.cached_tokens >= first.prompt_tokens
