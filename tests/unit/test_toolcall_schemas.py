"""Schemas as clients send them: what is not a schema is refused, what the grammar cannot do is relaxed."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from inference_server.toolcalls.schemas import SchemaError, check_schema, grammar_schema

SCHEMAS = Path(__file__).parents[1] / "fixtures" / "schemas"


def load(name: str) -> list[dict[str, Any]]:
    return json.loads((SCHEMAS / name).read_text())


def parameters(tool: dict[str, Any]) -> dict[str, Any]:
    return tool.get("input_schema") or tool["parameters"]


ALL_TOOLS = load("claude_code_tools.json") + load("openai_tools.json") + load("relaxed_tools.json")


def compiles(schema: dict[str, Any]) -> bool:
    from llguidance import LLMatcher

    return LLMatcher.validate_grammar(LLMatcher.grammar_from_json_schema(schema)) == ""


@pytest.mark.parametrize("tool", ALL_TOOLS, ids=lambda t: t["name"])
def test_every_fixture_schema_is_a_schema(tool):
    check_schema(parameters(tool))


@pytest.mark.parametrize("case", load("not_schemas.json"), ids=lambda c: c["why"])
def test_what_is_not_a_schema_is_refused_in_one_line(case):
    with pytest.raises(SchemaError) as caught:
        check_schema(case["value"])
    assert "\n" not in str(caught.value)


def test_the_refusal_says_where():
    with pytest.raises(SchemaError, match="properties/a"):
        check_schema({"type": "object", "properties": {"a": 5}})


@pytest.mark.parametrize("tool", ALL_TOOLS, ids=lambda t: t["name"])
def test_every_fixture_schema_compiles_for_the_grammar(tool):
    prepared = grammar_schema(parameters(tool), f"tool {tool['name']}")
    assert compiles(prepared)


@pytest.mark.parametrize(
    "tool", load("claude_code_tools.json") + load("openai_tools.json"), ids=lambda t: t["name"]
)
def test_supported_schemas_are_not_relaxed(tool, caplog):
    caplog.set_level(logging.WARNING, logger="inference_server.toolcalls.schemas")
    grammar_schema(parameters(tool), f"supported {tool['name']}")
    assert not caplog.records


def _without_closing(schema):
    """The schema less every `additionalProperties: false` (the one thing preparing may add)."""
    if isinstance(schema, list):
        return [_without_closing(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        k: _without_closing(v)
        for k, v in schema.items()
        if k != "x-guidance" and not (k == "additionalProperties" and v is False)
    }


def test_claude_codes_schemas_reach_the_grammar_unchanged_but_closed():
    for tool in load("claude_code_tools.json"):
        prepared = grammar_schema(tool["input_schema"], f"unchanged {tool['name']}")
        assert _without_closing(prepared) == _without_closing(tool["input_schema"])
        assert prepared["additionalProperties"] is False


def test_objects_that_list_properties_are_closed_unless_they_say_otherwise():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    assert grammar_schema(schema, "closed")["additionalProperties"] is False
    opened = grammar_schema({**schema, "additionalProperties": True}, "open")
    assert opened["additionalProperties"] is True
    assert "additionalProperties" not in grammar_schema({"type": "object"}, "any object")


def test_formats_and_integers_get_bounds_where_they_set_none():
    assert grammar_schema({"type": "string", "format": "email"}, "email")["maxLength"] == 254
    assert grammar_schema({"type": "string", "format": "date-time"}, "when")["maxLength"] == 64
    assert grammar_schema({"type": "string", "format": "email", "maxLength": 40}, "short")["maxLength"] == 40
    bounded = grammar_schema({"type": "integer", "exclusiveMinimum": 0}, "count")
    assert (bounded.get("minimum"), bounded["maximum"]) == (None, 2**53 - 1)


@pytest.mark.parametrize("tool", load("relaxed_tools.json"), ids=lambda t: t["name"])
def test_an_unsupported_feature_is_relaxed_and_logged_once_on_one_line(tool, caplog):
    caplog.set_level(logging.WARNING, logger="inference_server.toolcalls.schemas")
    what = f"relaxed {tool['name']}"
    grammar_schema(parameters(tool), what)
    grammar_schema(parameters(tool), what)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert what in lines[0] and tool["relaxed"] in lines[0]


def test_a_schema_the_grammar_cannot_compile_at_all_keeps_its_type(caplog):
    unsatisfiable = {
        "type": "object",
        "properties": {"a": {"allOf": [{"type": "string"}, {"type": "integer"}]}},
        "required": ["a"],
    }
    prepared = grammar_schema(unsatisfiable, "unsatisfiable")
    assert {k: v for k, v in prepared.items() if k != "x-guidance"} == {"type": "object"}
    assert "whole schema" in caplog.text
