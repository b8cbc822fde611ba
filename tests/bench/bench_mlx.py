"""Benchmark: the MLX engine on the bundled SmolLM2 converted to MLX, against mlx-lm called directly.

Run: `python tests/bench/bench_mlx.py` (or `inv test.bench`). Prints a table and writes
.bench/mlx.json. On Linux mlx runs on the CPU, so expect single-digit tokens per second.
"""

from __future__ import annotations

import asyncio
import json
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
QUESTION = "Write a long story about a lighthouse keeper."


async def engine_run(engine: MlxEngine, prompt: str) -> dict[str, float]:
    start = time.perf_counter()
    first = last = start
    tokens = 0
    async for chunk in engine.generate(prompt, SamplingParams(max_tokens=GENERATED, temperature=0)):
        now = time.perf_counter()
        if first == start:
            first = now
        last = now
        tokens = chunk.completion_tokens or tokens
    return {"ttft_s": first - start, "tokens": tokens, "tok_per_s": (tokens - 1) / (last - first)}


def raw_run(model_dir: Path, prompt: str) -> dict[str, float]:
    """mlx-lm's own stream_generate on this thread: the engine's ceiling."""
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(model_dir))[:2]
    *_, last = stream_generate(model, tokenizer, prompt, max_tokens=GENERATED, sampler=make_sampler(0.0))
    return {
        "prompt_tok_per_s": last.prompt_tps,
        "tokens": last.generation_tokens,
        "tok_per_s": last.generation_tps,
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
            served = asyncio.run(engine_run(engine, prompt))
        finally:
            engine.close()
        raw = raw_run(model_dir, prompt)
    results = {
        "model": "smollm2 (Q4_1 GGUF converted to MLX)",
        "generated": GENERATED,
        "engine": served,
        "raw": raw,
    }
    print_table(
        "MLX engine on SmolLM2-135M (mlx on CPU here)",
        ["path", "tokens", "generation tok/s", "time to first token"],
        [
            ("mlx-lm stream_generate", raw["tokens"], f"{raw['tok_per_s']:.1f}", ""),
            (
                "MlxEngine (worker thread)",
                served["tokens"],
                f"{served['tok_per_s']:.1f}",
                f"{served['ttft_s']:.2f} s",
            ),
        ],
    )
    out = ROOT / ".bench" / "mlx.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
