"""Constrained decoding on the bundled SmolLM2: its real vocabulary, its real llama.cpp model.

The grammar half feeds hand-written outputs through a TokenConstraint over the real vocabulary; the
model half samples at temperature 1.0 over many seeds (tests/e2e/decode_loop.py: the engine's step
for one sequence) and checks every call with jsonschema, through the family's CallParser fed token
by token as serving will feed it.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from inference_server.engines.base import ChatMessage, ToolSpec
from inference_server.toolcalls import (
    FAMILIES,
    CallEnd,
    CallParser,
    CallStart,
    ConstraintError,
    ConstraintPlan,
    TextDelta,
    TokenConstraint,
    compile_constraint,
    new_bitmask,
)
from inference_server.toolcalls.families import HERMES
from tasks.core.catalog import get_entry, load_catalog
from tasks.core.config import load
from tests.e2e.decode_loop import DecodeLoop, Generation

SCHEMAS = Path(__file__).parents[1] / "fixtures" / "schemas"
# Each seed is one random walk through a plan's grammar at temperature 1, every token masked: six
# per plan here, and test_tools_api samples the same compiler's plans six times per API path again.
SEEDS = range(6)
# In auto mode most samples are free text the grammar leaves alone; twice the seeds for its calls.
AUTO_SEEDS = range(12)
# The plans carry it, so the grammar lands (closes early) near its end: at temperature 1 SmolLM2 can
# fill a string for a thousand tokens, and a call cut off there would not parse.
BUDGET = 256
# Landing cannot cut a formatted string short (an email needs its "@domain", and SmolLM2 at
# temperature 1 writes local parts up to the 254 characters allowed, for up to 5 attendees): the test
# of the tool with emails gives the budget room for that.
EMAIL_BUDGET = 1536


def tools_from(name: str) -> tuple[ToolSpec, ...]:
    return tuple(
        ToolSpec(t["name"], t["description"], t.get("input_schema") or t["parameters"])
        for t in json.loads((SCHEMAS / name).read_text())
    )


CLAUDE_CODE = tools_from("claude_code_tools.json")
OPENAI = tools_from("openai_tools.json")
RELAXED = json.loads((SCHEMAS / "relaxed_tools.json").read_text())


@pytest.fixture(scope="module")
def loop() -> Iterator[DecodeLoop]:
    entry = get_entry(load_catalog(load().models.catalog), "smollm2")
    assert entry.bundled is not None
    path = entry.bundled.locate()
    assert path is not None, "the bundled SmolLM2 GGUF is not installed"
    decode = DecodeLoop(path)
    yield decode
    decode.close()


def feed(constraint: TokenConstraint, loop: DecodeLoop, text: str) -> None:
    """Accept `text` token by token as the model would have written it (raises ConstraintError)."""
    for token in loop.grammar_tokenizer.tokenize_str(text):
        constraint.accept(token)


def allowed(plan: ConstraintPlan, loop: DecodeLoop, text: str) -> bool:
    constraint = compile_constraint(plan, loop.grammar_tokenizer)
    try:
        feed(constraint, loop, text)
    except ConstraintError:
        return False
    return True


def hermes_call(name: str, arguments: dict[str, Any] | str) -> str:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


def parse(loop: DecodeLoop, generation: Generation, parser: CallParser) -> tuple[str, list[CallEnd]]:
    """The text and calls serving would see, fed one token's text at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a token may end mid-character
    events = []
    for token in generation.tokens:
        events += parser.feed(decoder.decode(loop.piece(token)))
    events += parser.feed(decoder.decode(b"", final=True)) + parser.close()
    starts = [e for e in events if isinstance(e, CallStart)]
    ends = [e for e in events if isinstance(e, CallEnd)]
    assert [s.name for s in starts] == [e.name for e in ends]
    return "".join(e.text for e in events if isinstance(e, TextDelta)), ends


def assert_valid(call: CallEnd, tools: tuple[ToolSpec, ...]) -> None:
    declared = {t.name: t for t in tools}
    assert call.name in declared, f"undeclared tool {call.name!r}"
    jsonschema.validate(call.arguments, declared[call.name].parameters)


# -- the grammar over the real vocabulary ------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("mode", ["auto", "required"])
def test_every_fixture_tool_set_compiles_for_every_family(loop, family, mode):
    tools = CLAUDE_CODE + OPENAI + tools_from("relaxed_tools.json")
    compile_constraint(ConstraintPlan("tools", tools=tools, mode=mode, family=family), loop.grammar_tokenizer)


def test_a_forced_call_must_name_a_declared_tool_with_valid_arguments(loop):
    plan = ConstraintPlan("tools", tools=OPENAI, mode="required", family=HERMES, parallel=False)
    order = {
        "order_id": "123e4567-e89b-12d3-a456-426614174000",
        "ship_to": {"street": "1 Main St", "zip": "12345", "country": "US"},
    }
    assert allowed(plan, loop, hermes_call("update_order", order))
    assert not allowed(plan, loop, hermes_call("delete_order", {}))
    assert not allowed(
        plan, loop, hermes_call("update_order", {**order, "ship_to": {**order["ship_to"], "zip": "1234"}})
    )
    assert not allowed(plan, loop, hermes_call("get_weather", {"city": "Paris", "unit": "kelvin"}))
    assert not allowed(plan, loop, hermes_call("get_weather", '{"city":"Paris"}')), "compact separators only"
    assert not allowed(plan, loop, "Sure! " + hermes_call("get_weather", {"city": "Paris"}))


def test_a_named_tool_is_the_only_one_allowed(loop):
    plan = ConstraintPlan("tools", tools=OPENAI, mode="named", name="get_weather", family=HERMES)
    assert allowed(plan, loop, hermes_call("get_weather", {"city": "Paris"}))
    assert not allowed(plan, loop, hermes_call("search", {"query": "x"}))


@pytest.mark.parametrize("tool", RELAXED, ids=lambda t: t["name"])
def test_a_relaxed_schema_still_constrains_the_rest(loop, tool):
    spec = ToolSpec(tool["name"], tool["description"], tool["parameters"])
    plan = ConstraintPlan("tools", tools=(spec,), mode="required", family=HERMES, parallel=False)
    assert allowed(plan, loop, hermes_call(spec.name, tool["valid"]))
    assert not allowed(plan, loop, hermes_call(spec.name, tool["invalid"]))


def test_auto_mode_lets_text_be_and_constrains_a_call_once_opened(loop):
    plan = ConstraintPlan("tools", tools=OPENAI, mode="auto", family=HERMES)
    assert allowed(plan, loop, "It is sunny. I can use <b>tags</b> and < signs freely.")
    assert allowed(plan, loop, "Let me check.\n" + hermes_call("get_weather", {"city": "Paris"}))
    assert not allowed(plan, loop, "Let me check.\n<tool_call>\nthe weather please")
    assert not allowed(plan, loop, "Let me check.\n" + hermes_call("get_time", {}))


def test_auto_mode_computes_no_mask_for_free_text(loop):
    import numpy as np

    constraint = compile_constraint(
        ConstraintPlan("tools", tools=OPENAI, family=HERMES), loop.grammar_tokenizer
    )
    mask = np.zeros(1, dtype=np.int32)  # too small to fill: fill_mask must not touch it
    for token in loop.grammar_tokenizer.tokenize_str("Plain text with no call in it."):
        assert constraint.fill_mask(mask) is False
        constraint.accept(token)


def test_markers_that_are_special_tokens_are_matched_as_tokens(loop):
    """Qwen's <tool_call>, Phi-4's <|tool_call|>, Mistral's [TOOL_CALLS] are single special tokens in
    their vocabularies; SmolLM2 has none of them, so its own specials stand in, in the same family shape."""
    family = dataclasses.replace(
        HERMES, trigger="<|im_start|>", opener="<|im_start|>\n", closer="\n<file_sep>"
    )
    tok = loop.grammar_tokenizer
    start, sep = (
        tok.tokenize_str("<|im_start|>", parse_special=True),
        tok.tokenize_str("<file_sep>", parse_special=True),
    )
    assert len(start) == len(sep) == 1 and tok.is_special_token(start[0]) and tok.is_special_token(sep[0])
    body = tok.tokenize_str('\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n')
    for mode in ("auto", "required"):
        plan = ConstraintPlan("tools", tools=OPENAI, mode=mode, family=family, parallel=False)
        constraint = compile_constraint(plan, tok)
        text = tok.tokenize_str("Let me check.") if mode == "auto" else []
        for token in [*text, *start, *body, *sep]:
            constraint.accept(token)
        assert constraint.stopped(), mode
        # Spelled out in text the marker still opens a call in free text (a model may write it so),
        # but where the grammar writes it, only the token will do.
        spelled = compile_constraint(plan, tok)
        if mode == "auto":
            feed(spelled, loop, "Let me check.<|im_start|>")
            assert spelled.fill_mask(new_bitmask(tok.vocab_size)), "the call is constrained from here"
        else:
            assert not allowed(plan, loop, "<|im_start|>")


def test_a_finished_call_stops_the_sequence(loop):
    plan = ConstraintPlan("tools", tools=OPENAI, mode="required", family=HERMES, parallel=False)
    constraint = compile_constraint(plan, loop.grammar_tokenizer)
    feed(constraint, loop, hermes_call("get_weather", {"city": "Paris"})[:-1])
    assert not constraint.stopped()
    feed(constraint, loop, ">")
    assert constraint.stopped()


def test_landing_in_a_string_leaves_it_rather_than_opening_the_next(loop):
    """`", "` closes a string and opens the next: preferred at the budget's end it looped an open
    object through empty keys until the budget cut it off (`{"": "", "": "", ...`)."""
    tok = loop.grammar_tokenizer
    constraint = compile_constraint(ConstraintPlan("json", max_tokens=8), tok)
    feed(constraint, loop, '{"city": "Par')
    mask = new_bitmask(tok.vocab_size)
    assert constraint.fill_mask(mask)
    bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[: tok.vocab_size]
    pieces = {tok.decode_bytes([t]) for t in np.flatnonzero(bits)}
    assert b'"}' in pieces or b'"' in pieces, pieces
    assert all(p.startswith(b'"') and p.count(b'"') == 1 and b"," not in p for p in pieces), pieces


# -- the model under the grammar ---------------------------------------------------------------


def test_forced_calls_at_temperature_one_always_parse_and_validate(loop):
    tools = (OPENAI[0], OPENAI[2], OPENAI[3])  # $ref/$defs, patterns, a uuid, enums, bounds, oneOf
    loop.set_prompt(
        loop.template.render([ChatMessage("user", "Ship order 42 to 1 Main St, 12345, US.")], tools)
    )
    plan = ConstraintPlan(
        "tools", tools=tools, mode="required", family=HERMES, parallel=False, max_tokens=BUDGET
    )
    for seed in SEEDS:
        generation = loop.generate(
            compile_constraint(plan, loop.grammar_tokenizer), seed=seed, max_tokens=BUDGET
        )
        assert generation.finish == "grammar", (seed, generation.text)
        text, calls = parse(loop, generation, HERMES.new_parser())
        assert text == "" and len(calls) == 1, (seed, generation.text)
        assert_valid(calls[0], tools)


def test_a_named_call_at_temperature_one_fills_nested_arrays_within_bounds(loop):
    tools = OPENAI
    loop.set_prompt(loop.template.render([ChatMessage("user", "Set up the team sync.")], tools))
    plan = ConstraintPlan(
        "tools",
        tools=tools,
        mode="named",
        name="create_event",
        family=HERMES,
        parallel=False,
        max_tokens=EMAIL_BUDGET,
    )
    for seed in range(6):
        generation = loop.generate(
            compile_constraint(plan, loop.grammar_tokenizer), seed=seed, max_tokens=EMAIL_BUDGET
        )
        assert generation.finish == "grammar", (seed, generation.text)
        _, calls = parse(loop, generation, HERMES.new_parser())
        assert [c.name for c in calls] == ["create_event"], (seed, generation.text)
        assert_valid(calls[0], tools)


def test_json_answers_at_temperature_one_always_validate(loop):
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "population": {"type": "integer", "minimum": 0},
            "districts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
            "climate": {"type": "string", "enum": ["oceanic", "continental", "arid"]},
        },
        "required": ["city", "population", "districts", "climate"],
        "additionalProperties": False,
    }
    loop.set_prompt(loop.template.render([ChatMessage("user", "Describe Paris as JSON.")]))
    for seed in SEEDS:
        constraint = compile_constraint(
            ConstraintPlan("json", schema=schema, max_tokens=BUDGET), loop.grammar_tokenizer
        )
        generation = loop.generate(constraint, seed=seed, max_tokens=BUDGET)
        assert generation.finish == "grammar", (seed, generation.text)
        jsonschema.validate(json.loads(generation.text), schema)


def test_a_budget_too_small_for_the_answer_still_ends_it_valid(loop):
    schema = {
        "type": "object",
        "properties": {
            "story": {"type": "string"},
            "moral": {"type": "string"},
            "rating": {"type": "number"},
        },
        "required": ["story", "moral", "rating"],
    }
    loop.set_prompt(loop.template.render([ChatMessage("user", "Tell me a long story, as JSON.")]))
    for seed in SEEDS:
        constraint = compile_constraint(
            ConstraintPlan("json", schema=schema, max_tokens=40), loop.grammar_tokenizer
        )
        generation = loop.generate(constraint, seed=seed, max_tokens=40)
        assert generation.finish == "grammar", (seed, generation.text)
        jsonschema.validate(json.loads(generation.text), schema)


@pytest.mark.parametrize("budget", [30, 60])
def test_any_object_within_a_small_budget_always_parses(loop, budget):
    """Ollama's `format: "json"` with a small num_predict: the whole budget is near its end."""
    loop.set_prompt(loop.template.render([ChatMessage("user", "A city as JSON.")]))
    for seed in AUTO_SEEDS:
        constraint = compile_constraint(ConstraintPlan("json", max_tokens=budget), loop.grammar_tokenizer)
        generation = loop.generate(constraint, seed=seed, max_tokens=budget)
        assert generation.finish == "grammar", (seed, generation.text)
        assert isinstance(json.loads(generation.text), dict)


def test_auto_mode_yields_text_or_a_valid_call(loop):
    tools = OPENAI[:1]
    loop.set_prompt(
        loop.template.render([ChatMessage("user", "What's the weather like in Paris right now?")], tools)
    )
    plan = ConstraintPlan("tools", tools=tools, mode="auto", family=HERMES, parallel=False, max_tokens=BUDGET)
    for seed in AUTO_SEEDS:
        generation = loop.generate(
            compile_constraint(plan, loop.grammar_tokenizer), seed=seed, max_tokens=BUDGET
        )
        text, calls = parse(loop, generation, HERMES.new_parser())
        if "<tool_call>" in generation.text:
            assert len(calls) == 1 and generation.finish == "grammar", (seed, generation.text)
            assert_valid(calls[0], tools)
        else:
            assert calls == [] and text.strip() == generation.text.strip(), (seed, generation.text)


def test_a_forced_call_over_claude_codes_tools_validates(loop):
    n = loop.set_prompt(
        loop.template.render([ChatMessage("user", "Show me what is in README.md.")], CLAUDE_CODE)
    )
    assert n < 2000, "the fallback's description of Claude Code's tools stays small"
    plan = ConstraintPlan(
        "tools", tools=CLAUDE_CODE, mode="required", family=HERMES, parallel=False, max_tokens=BUDGET
    )
    for seed in range(4):
        generation = loop.generate(
            compile_constraint(plan, loop.grammar_tokenizer), seed=seed, max_tokens=BUDGET
        )
        assert generation.finish == "grammar", (seed, generation.text)
        _, calls = parse(loop, generation, HERMES.new_parser())
        assert len(calls) == 1, (seed, generation.text)
        assert_valid(calls[0], CLAUDE_CODE)


def test_a_hugging_face_tokenizer_masks_like_the_llama_cpp_vocabulary(loop, mlx_smollm2_dir):
    """The MLX engine's grammar tokenizer (tokenizer.json, as models.convert writes it) allows the same
    tokens at every step as the one built from the GGUF's vocabulary."""
    import numpy as np
    from tokenizers import Tokenizer

    from inference_server.toolcalls import tokenizer_from_hf

    hf = tokenizer_from_hf(Tokenizer.from_file(str(mlx_smollm2_dir / "tokenizer.json")), eos_tokens=[2])
    assert hf.vocab_size == loop.grammar_tokenizer.vocab_size
    plan = ConstraintPlan(
        "tools", tools=OPENAI, mode="required", family=HERMES, parallel=False, max_tokens=BUDGET
    )
    ours, theirs = compile_constraint(plan, loop.grammar_tokenizer), compile_constraint(plan, hf)
    text = hermes_call("get_weather", {"city": "Paris", "unit": "celsius"})
    for token in loop.grammar_tokenizer.tokenize_str(text)[:-1]:
        a, b = new_bitmask(hf.vocab_size), new_bitmask(hf.vocab_size)
        assert ours.fill_mask(a) and theirs.fill_mask(b)
        assert np.array_equal(a, b)
        ours.accept(token)
        theirs.accept(token)
