"""Benchmark: the MLX engine on the bundled SmolLM2 converted to MLX, against mlx-lm called directly.

The engine runs at 1, 2 and 4 concurrent streams (batched decoding); aggregate tok/s counts every
stream's tokens over the wall time of the round. Run: `python -m tests.bench.bench_mlx` (or
`inv test.bench`). Prints a table and writes .bench/mlx.json. On Linux mlx runs on the CPU, so expect
single-digit tokens per second.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from inference_server.engines.base import ChatMessage, SamplingParams
from inference_server.engines.mlx_engine import MlxEngine
from tasks.core import catalog, config
from tasks.core.console import print_table
from tasks.core.convert import convert_gguf

ROOT = Path(__file__).resolve().parents[2]
GENERATED = 64
CONCURRENCY = (1, 2, 4)
QUESTION = "Write a long story about a lighthouse keeper."


async def one_stream(engine: MlxEngine, prompt: str) -> tuple[float, int]:
    """(time to first token, tokens generated) for one greedy stream."""
    start = time.perf_counter()
    first = 0.0
    tokens = 0
    async for chunk in engine.generate(
        engine.tokenize(prompt), SamplingParams(max_tokens=GENERATED, temperature=0)
    ):
        first = first or time.perf_counter() - start
        tokens = chunk.completion_tokens or tokens
    return first, tokens


async def engine_round(engine: MlxEngine, prompt: str, streams: int) -> dict[str, float]:
    start = time.perf_counter()
    results = await asyncio.gather(*(one_stream(engine, prompt) for _ in range(streams)))
    wall = time.perf_counter() - start
    tokens = sum(n for _, n in results)
    return {
        "streams": streams,
        "tokens": tokens,
        "aggregate_tok_per_s": tokens / wall,
        "per_stream_tok_per_s": tokens / wall / streams,
        "ttft_p50_s": statistics.median(t for t, _ in results),
    }


def raw_run(model_dir: Path, prompt: str) -> dict[str, float]:
    """mlx-lm's own stream_generate on this thread, timed like a stream: the engine's ceiling."""
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(model_dir))[:2]
    start = time.perf_counter()
    steps = stream_generate(model, tokenizer, prompt, max_tokens=GENERATED, sampler=make_sampler(0.0))
    next(steps)
    first = time.perf_counter() - start
    *_, step = steps
    wall = time.perf_counter() - start
    return {
        "streams": 1,
        "tokens": step.generation_tokens,
        "aggregate_tok_per_s": step.generation_tokens / wall,
        "per_stream_tok_per_s": step.generation_tokens / wall,
        "ttft_p50_s": first,
        "prompt_tok_per_s": step.prompt_tps,
        "decode_tok_per_s": step.generation_tps,
    }


def main() -> None:
    entry = catalog.load_catalog(config.load().models.catalog)["smollm2"]
    assert entry.bundled is not None
    gguf = entry.bundled.locate()
    if gguf is None:
        raise SystemExit("the bundled SmolLM2 GGUF is missing: install the project's dependencies")
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = convert_gguf(gguf, Path(scratch) / "smollm2").output
        engine = MlxEngine(model_dir, model_name="smollm2", context_size=2048)
        engine.start()
        try:
            prompt = engine.render_chat([ChatMessage("user", QUESTION)])
            rounds = [asyncio.run(engine_round(engine, prompt, n)) for n in CONCURRENCY]
        finally:
            engine.close()
        raw = raw_run(model_dir, prompt)
    results = {
        "model": "smollm2 (Q4_1 GGUF converted to MLX)",
        "generated_per_stream": GENERATED,
        "raw": raw,
        "engine": rounds,
    }
    print_table(
        "MLX engine on SmolLM2-135M (mlx on CPU here; tok/s over wall time, prefill included)",
        ["path", "streams", "aggregate tok/s", "per-stream tok/s", "TTFT p50"],
        [
            (
                path,
                r["streams"],
                f"{r['aggregate_tok_per_s']:.1f}",
                f"{r['per_stream_tok_per_s']:.1f}",
                f"{r['ttft_p50_s']:.2f} s",
            )
            for path, r in [("mlx-lm stream_generate, in-process", raw)]
            + [("MlxEngine (batched worker thread)", r) for r in rounds]
        ],
    )
    print(
        f"mlx-lm alone: prefill {raw['prompt_tok_per_s']:.1f} tok/s, "
        f"decode {raw['decode_tok_per_s']:.1f} tok/s"
    )
    out = ROOT / ".bench" / "mlx.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
