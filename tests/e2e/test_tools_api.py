"""Tool calls and structured output through the official SDKs, against the real server and model.

Every produced call or JSON answer is checked with `jsonschema` against the schema it was asked for:
the constraint, not luck, must make them valid, so forced calls run at temperature 1.0 over seeds.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import pytest

from tests.fixtures.server import TIMEOUT, RunningServer, running_server, settings_for_test

SEEDS = range(6)
ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius? Use the tool."}]
FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "hours": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 23}, "maxItems": 3},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
            "additionalProperties": False,
        },
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {"name": "forecast", "description": "Weather forecast", "parameters": FORECAST},
    },
    {"type": "function", "function": {"name": "clock", "description": "Time in a zone", "parameters": TIME}},
]
ANTHROPIC_TOOLS = [
    {"name": "forecast", "description": "Weather forecast", "input_schema": FORECAST},
    {"name": "clock", "description": "Time in a zone", "input_schema": TIME},
]
SCHEMAS = {"forecast": FORECAST, "clock": TIME}
ANSWER = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}, "required": ["kind"]},
    },
    "required": ["name", "age", "tags", "pet"],
}
PERSON = [{"role": "user", "content": "Describe a person as JSON."}]
CLAUDE_CODE = json.loads((Path(__file__).parents[1] / "fixtures" / "claude_code_request.json").read_text())


def validates(name: str, arguments: dict[str, Any], schemas: dict[str, Any] = SCHEMAS) -> None:
    assert name in schemas, f"{name} is not a declared tool"
    jsonschema.validate(arguments, schemas[name])


def final_choice(oai: openai.OpenAI, request: dict[str, Any]) -> Any:
    """The streamed answer as the SDK's stream helper reassembles it (which raises on `length`)."""
    with oai.chat.completions.stream(**request) as events:
        try:
            return events.get_final_completion().choices[0]
        except openai.LengthFinishReasonError as cut:
            return cut.completion.choices[0]


def openai_calls(
    oai: openai.OpenAI, stream: bool, **fields: Any
) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """(name, arguments) of each call and the finish reason, streamed through the SDK's helper or not."""
    request = {"model": "smollm2", "messages": ASK, "tools": OPENAI_TOOLS, "max_tokens": 200, **fields}
    choice = final_choice(oai, request) if stream else oai.chat.completions.create(**request).choices[0]
    calls = choice.message.tool_calls or []
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls], choice.finish_reason


def anthropic_calls(
    claude: anthropic.Anthropic, stream: bool, **fields: Any
) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    request = {"model": "smollm2", "messages": ASK, "tools": ANTHROPIC_TOOLS, "max_tokens": 200, **fields}
    if "temperature" in request:  # this SDK no longer has the argument; Claude Code still sends it
        request["extra_body"] = {"temperature": request.pop("temperature")}
    if stream:
        with claude.messages.stream(**request) as events:
            reply = events.get_final_message()
    else:
        reply = claude.messages.create(**request)
    uses = [b for b in reply.content if b.type == "tool_use"]
    for use in uses:
        assert use.id.startswith("toolu_")
    return [(b.name, b.input) for b in uses], reply.stop_reason  # type: ignore[misc]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "forecast"}}], ids=["required", "named"]
)
def test_openai_forced_calls_validate_at_temperature_1(oai: openai.OpenAI, choice: Any, stream: bool) -> None:
    for seed in SEEDS:
        calls, finish = openai_calls(oai, stream, tool_choice=choice, temperature=1.0, seed=seed)
        assert calls and finish == "tool_calls", f"seed {seed}"
        for name, arguments in calls:
            validates(name, arguments)
        if isinstance(choice, dict):
            assert {name for name, _ in calls} == {"forecast"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "clock"}], ids=["any", "named"])
def test_anthropic_forced_calls_validate_at_temperature_1(
    claude: anthropic.Anthropic, choice: dict[str, Any], stream: bool
) -> None:
    for attempt in SEEDS:
        calls, stop = anthropic_calls(claude, stream, tool_choice=choice, temperature=1.0)
        assert calls and stop == "tool_use", f"attempt {attempt}"
        for name, arguments in calls:
            validates(name, arguments)
        if choice["type"] == "tool":
            assert {name for name, _ in calls} == {"clock"}


def test_parallel_calls_off_means_one_call(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    for seed in SEEDS:
        calls, _ = openai_calls(oai, False, tool_choice="required", parallel_tool_calls=False, seed=seed)
        assert len(calls) == 1
    calls, _ = anthropic_calls(claude, False, tool_choice={"type": "any", "disable_parallel_tool_use": True})
    assert len(calls) == 1


def test_streamed_openai_arguments_come_in_fragments(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="smollm2",
            messages=ASK,
            tools=OPENAI_TOOLS,
            tool_choice="required",
            stream=True,
            temperature=0,
        )
    )
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    first = deltas[0]
    assert first.id and first.type == "function" and first.function and first.function.name
    fragments = [d.function.arguments for d in deltas[1:] if d.index == first.index and d.function]
    assert len(fragments) > 1, "arguments arrive as they are generated, not as one blob"
    validates(first.function.name, json.loads("".join(f or "" for f in fragments)))


def test_openai_streamed_call_equals_the_non_streamed_one_at_temperature_0(oai: openai.OpenAI) -> None:
    whole = openai_calls(oai, False, tool_choice="required", temperature=0)
    assert whole == openai_calls(oai, True, tool_choice="required", temperature=0)
    assert whole[0]


def test_anthropic_streamed_call_equals_the_non_streamed_one_at_temperature_0(
    claude: anthropic.Anthropic,
) -> None:
    whole = anthropic_calls(claude, False, tool_choice={"type": "any"}, temperature=0)
    assert whole == anthropic_calls(claude, True, tool_choice={"type": "any"}, temperature=0)
    assert whole[0]


def test_auto_answers_with_text_or_a_valid_call(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    for seed in SEEDS:
        calls, finish = openai_calls(oai, seed % 2 == 1, temperature=1.0, seed=seed)
        assert finish in ("tool_calls", "stop", "length")
        for name, arguments in calls:
            validates(name, arguments)
        calls, _ = anthropic_calls(claude, seed % 2 == 1, temperature=1.0)
        for name, arguments in calls:
            validates(name, arguments)


def test_tool_choice_none_never_calls(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    for seed in SEEDS:
        calls, finish = openai_calls(
            oai, seed % 2 == 1, tool_choice="none", temperature=1.0, seed=seed, max_tokens=48
        )
        assert (calls, finish != "tool_calls") == ([], True)
        calls, stop = anthropic_calls(
            claude, seed % 2 == 1, tool_choice={"type": "none"}, temperature=1.0, max_tokens=48
        )
        assert (calls, stop != "tool_use") == ([], True)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_openai_json_schema_answers_validate(oai: openai.OpenAI, stream: bool) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": ANSWER, "strict": True},
    }
    for seed in SEEDS:
        request = {
            "model": "smollm2", "messages": PERSON, "response_format": response_format,
            "temperature": 1.0, "seed": seed, "max_tokens": 300,
        }  # fmt: skip
        choice = final_choice(oai, request) if stream else oai.chat.completions.create(**request).choices[0]
        assert choice.finish_reason == "stop", f"seed {seed}: a schema-bound answer ends by itself"
        jsonschema.validate(json.loads(choice.message.content or ""), ANSWER)


def test_openai_json_object_answers_always_parse(oai: openai.OpenAI) -> None:
    for seed in SEEDS:
        reply = oai.chat.completions.create(
            model="smollm2", messages=PERSON, response_format={"type": "json_object"},
            temperature=1.0, seed=seed, max_tokens=300,
        )  # fmt: skip
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(json.loads(choice.message.content or ""), dict)


@pytest.mark.parametrize("spelling", ["output_config", "output_format"])
def test_anthropic_structured_outputs_validate(claude: anthropic.Anthropic, spelling: str) -> None:
    fmt = {"type": "json_schema", "schema": ANSWER}
    extra = {"output_config": {"format": fmt}} if spelling == "output_config" else {"output_format": fmt}
    for _ in SEEDS:
        reply = claude.messages.create(
            model="smollm2", messages=PERSON, max_tokens=300, extra_body={"temperature": 1.0, **extra}
        )
        assert reply.stop_reason == "end_turn"
        jsonschema.validate(json.loads(reply.content[0].text), ANSWER)  # type: ignore[union-attr]


def test_openai_round_trip_call_result_then_text(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(
        model="smollm2",
        messages=ASK,
        tools=OPENAI_TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=200,
    )
    message = first.choices[0].message
    assert message.tool_calls
    results = [
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"}
        for call in message.tool_calls
    ]
    history = [*ASK, message.model_dump(exclude_none=True), *results]
    final = oai.chat.completions.create(
        model="smollm2",
        messages=history,
        tools=OPENAI_TOOLS,
        tool_choice="none",
        temperature=0,
        max_tokens=40,
    )
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason in ("stop", "length")


def test_anthropic_round_trip_call_result_then_text(claude: anthropic.Anthropic) -> None:
    first = claude.messages.create(
        model="smollm2",
        messages=ASK,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "any"},
        max_tokens=200,
        extra_body={"temperature": 0},
    )
    uses = [b for b in first.content if b.type == "tool_use"]
    assert uses and first.stop_reason == "tool_use"
    results = [{"type": "tool_result", "tool_use_id": u.id, "content": "18 degrees and sunny"} for u in uses]
    history = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": results},
    ]
    final = claude.messages.create(
        model="smollm2",
        messages=history,
        tools=ANTHROPIC_TOOLS,
        tool_choice={"type": "none"},
        max_tokens=40,
        extra_body={"temperature": 0},
    )
    assert final.content[0].type == "text" and final.content[0].text
    assert final.stop_reason in ("end_turn", "max_tokens")


@pytest.fixture(scope="module")
def roomy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Claude Code's smallest request is ~4.3k tokens: the model's whole context, one slot."""
    with running_server(tmp_path_factory.mktemp("roomy"), settings_for_test(context_size=8192, slots=1)) as s:
        yield s


CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,context-1m-2025-08-07",
}


def claude_code_post(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    headers = {"x-api-key": server.api_key, **CLAUDE_CODE_HEADERS}
    return httpx.post(f"{server.url}/v1/messages?beta=true", json=body, headers=headers, timeout=TIMEOUT * 3)


def test_claude_codes_real_request_streams_without_an_error(roomy_server: RunningServer) -> None:
    """The capture as sent (stream, max_tokens 128000, thinking, betas), read until a few deltas."""
    headers = {"x-api-key": roomy_server.api_key, **CLAUDE_CODE_HEADERS}
    url = f"{roomy_server.url}/v1/messages?beta=true"
    kinds = []
    with httpx.stream("POST", url, json=CLAUDE_CODE, headers=headers, timeout=TIMEOUT * 3) as reply:
        assert reply.status_code == 200, reply.read().decode()
        for line in reply.iter_lines():
            if line.startswith("event: "):
                kinds.append(line[7:])
            if kinds.count("content_block_delta") >= 3 or "message_stop" in kinds:
                break
    assert "error" not in kinds and kinds[:2] == ["message_start", "ping"]
    assert "content_block_start" in kinds


def test_a_forced_call_on_claude_codes_tools_validates(roomy_server: RunningServer) -> None:
    schemas = {tool["name"]: tool["input_schema"] for tool in CLAUDE_CODE["tools"]}
    body = {**copy.deepcopy(CLAUDE_CODE), "stream": False, "max_tokens": 400, "tool_choice": {"type": "any"}}
    reply = claude_code_post(roomy_server, body)
    assert reply.status_code == 200, reply.text
    uses = [b for b in reply.json()["content"] if b["type"] == "tool_use"]
    assert uses and reply.json()["stop_reason"] == "tool_use"
    for use in uses:
        validates(use["name"], use["input"], schemas)


Post = Callable[[str, dict[str, Any]], httpx.Response]


@pytest.fixture
def post(inference_server: RunningServer) -> Post:
    def send(path: str, body: dict[str, Any]) -> httpx.Response:
        headers = {
            "authorization": f"Bearer {inference_server.api_key}",
            "x-api-key": inference_server.api_key,
        }
        return httpx.post(f"{inference_server.url}{path}", json=body, headers=headers, timeout=TIMEOUT)

    return send


CHAT = {"model": "smollm2", "messages": ASK, "max_tokens": 4}
CALL = {"id": "call_1", "type": "function", "function": {"name": "clock", "arguments": "{"}}
NO_SCHEMA = {"name": "x", "schema": "y"}
UNKNOWN_RESULT = {"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}
NO_ID_USE = {"type": "tool_use", "name": "f", "input": {}}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"tools": OPENAI_TOOLS, "tool_choice": {"type": "function", "function": {"name": "no"}}}, "'no'"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "JSON Schema"),
        ({"messages": [*ASK, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]}, "call_9"),
        ({"messages": [*ASK, {"role": "assistant", "tool_calls": [{"function": {}}]}]}, "tool_calls"),
        ({"messages": [*ASK, {"role": "assistant", "tool_calls": [CALL]}]}, "arguments"),
        ({"response_format": {"type": "json_schema", "json_schema": NO_SCHEMA}}, "JSON Schema"),
        ({"logprobs": True}, "logprobs"),
        ({"seed": -1}, "seed"),
        ({"stop": ["x"] * 100}, "stop"),
        ({"tool_choice": "required"}, "no tools"),
    ],
)
def test_openai_bad_input_is_a_400_in_openais_envelope(post: Post, change: dict[str, Any], says: str) -> None:
    reply = post("/v1/chat/completions", {**CHAT, **change})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and says in error["message"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"tools": ANTHROPIC_TOOLS, "tool_choice": {"type": "tool", "name": "no"}}, "'no'"),
        ({"tools": [{"name": "f", "input_schema": "object"}]}, "JSON Schema"),
        ({"tools": [{"name": "f"}]}, "input_schema"),
        ({"messages": [{"role": "user", "content": [UNKNOWN_RESULT]}]}, "toolu_9"),
        ({"messages": [{"role": "assistant", "content": [NO_ID_USE]}]}, "tool_use"),
        ({"output_config": {"format": {"type": "json_schema", "schema": 3}}}, "JSON Schema"),
        ({"top_k": 3}, "top_k"),
    ],
)
def test_anthropic_bad_input_is_a_400_in_anthropics_envelope(
    post: Post, change: dict[str, Any], says: str
) -> None:
    paths = ["/v1/messages"] + ([] if "top_k" in change else ["/v1/messages/count_tokens"])
    for path in paths:  # count_tokens takes no sampling options
        reply = post(path, {**CHAT, **change})
        assert reply.status_code == 400, f"{path}: {reply.text}"
        body = reply.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert says in body["error"]["message"]


def test_count_tokens_counts_the_tools(post: Post) -> None:
    bare = post("/v1/messages/count_tokens", {"model": "smollm2", "messages": ASK}).json()["input_tokens"]
    tooled = post(
        "/v1/messages/count_tokens", {"model": "smollm2", "messages": ASK, "tools": ANTHROPIC_TOOLS}
    )
    assert tooled.status_code == 200 and tooled.json()["input_tokens"] > bare
