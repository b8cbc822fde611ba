"""Benchmark: the grammar's cost per token on the bundled SmolLM2's vocabulary (49,152 tokens).

Claude Code's 12 real tools, forced calls sampled by the real model at temperature 1.0: the time to
compile the constraint (cold and cached), to fill each token's mask (llguidance) and to apply it to
the logits (numpy), plus auto mode's free text, where no mask is computed. Run:
`python -m tests.bench.bench_grammar` (or `inv test.bench --only grammar`). Prints a table and
writes .bench/grammar.json. Throughput with and without constraints at 1 and 4 streams is the
serving benchmark's.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from inference_server.engines.base import ChatMessage, ToolSpec
from inference_server.toolcalls import ConstraintPlan, compile_constraint
from inference_server.toolcalls.families import HERMES
from tasks.core import catalog, config
from tasks.core.console import print_table
from tests.e2e.decode_loop import DecodeLoop

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tests" / "fixtures" / "schemas" / "claude_code_tools.json"
SEEDS = range(8)


def microseconds(values: list[float]) -> tuple[str, str, str]:
    ordered = sorted(values)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"{statistics.median(ordered) * 1e6:.0f}", f"{p90 * 1e6:.0f}", f"{ordered[-1] * 1e6:.0f}"


def main() -> None:
    entry = catalog.load_catalog(config.load().models.catalog)["smollm2"]
    assert entry.bundled is not None
    path = entry.bundled.locate()
    assert path is not None, "the bundled SmolLM2 GGUF is not installed"
    tools = tuple(
        ToolSpec(t["name"], t["description"], t["input_schema"]) for t in json.loads(TOOLS.read_text())
    )
    loop = DecodeLoop(path)
    loop.set_prompt(loop.template.render([ChatMessage("user", "Show me what is in README.md.")], tools))
    plan = ConstraintPlan("tools", tools=tools, mode="required", family=HERMES, parallel=False)

    start = time.perf_counter()
    compile_constraint(plan, loop.grammar_tokenizer)
    cold = time.perf_counter() - start
    fill: list[float] = []
    apply: list[float] = []
    warm: list[float] = []
    for seed in SEEDS:
        start = time.perf_counter()
        constraint = compile_constraint(plan, loop.grammar_tokenizer)
        warm.append(time.perf_counter() - start)
        trace: dict[str, list[float]] = {}
        loop.generate(constraint, seed=seed, max_tokens=200, trace=trace)
        fill += trace["fill"]
        apply += trace["apply"]

    free_plan = ConstraintPlan("tools", tools=tools, mode="auto", family=HERMES)
    free: list[float] = []
    for seed in SEEDS:
        trace = {}
        constraint = compile_constraint(free_plan, loop.grammar_tokenizer)
        generation = loop.generate(constraint, seed=seed, max_tokens=64, trace=trace)
        if "<tool_call>" not in generation.text:  # a text answer: what share of its tokens got a mask
            free.append(len(trace["fill"]) / max(len(generation.tokens), 1))
    loop.close()

    rows = [
        ("fill mask (forced call)", *microseconds(fill), len(fill)),
        ("apply mask (numpy)", *microseconds(apply), len(apply)),
        ("fill + apply", *microseconds([f + a for f, a in zip(fill, apply, strict=True)]), len(fill)),
        ("compile, cold", f"{cold * 1e6:.0f}", "", "", 1),
        ("compile, cached", *microseconds(warm), len(warm)),
    ]
    title = "Grammar cost per token, SmolLM2 vocabulary, Claude Code's 12 tools"
    print_table(title, ["", "median µs", "p90 µs", "max µs", "n"], rows)
    share = statistics.mean(free) if free else 0.0
    print(f"auto mode, text answers: a mask was computed for {100 * share:.1f}% of their tokens")
    out = ROOT / ".bench" / "grammar.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "vocab": loop.grammar_tokenizer.vocab_size,
                "tools": len(tools),
                "rows": [
                    dict(zip(["what", "median_us", "p90_us", "max_us", "n"], row, strict=True))
                    for row in rows
                ],
                "auto_text_masked_share": share,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
