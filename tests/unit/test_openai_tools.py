"""OpenAI chat with tools: requests to engine messages and plans, events to answers and chunks.

Answers are parsed by the real `openai` SDK (its models, and its stream helper over recorded SSE).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError

from inference_server.calls import canonical
from inference_server.engines.base import ChatMessage, EngineError, ToolCall, ToolSpec
from inference_server.errors import ApiError
from inference_server.openai import protocol as p
from inference_server.openai.serving import ChatReply, constraint, to_messages
from inference_server.toolcalls import CallArgs, CallEnd, CallStart, TextDelta
from tests.fixtures.recorded_stream import Recorded, replaying, sse_text, weather_call_events

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOLS = [ToolSpec("get_weather", "Weather in a city", WEATHER["function"]["parameters"])]  # type: ignore[index]
CALL_ID = re.compile(r"^call_[0-9a-f]{24,}$")
ONE_CALL = weather_call_events()


def request(**fields: Any) -> p.ChatCompletionRequest:
    return p.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def history(*messages: dict[str, Any]) -> list[ChatMessage]:
    return to_messages(request(messages=list(messages)).messages)


def sdk_client(body: str | dict[str, Any], *, stream: bool) -> openai.OpenAI:
    return openai.OpenAI(
        base_url="http://test/v1",
        api_key="k",
        http_client=replaying(body, stream=stream, http=httpx),
        max_retries=0,
    )


def answer(events: list[object], finish: str = "tool_calls", tools: list[ToolSpec] = TOOLS) -> Any:
    reply = ChatReply("m", tools)
    completion = asyncio.run(reply.completion(Recorded(events, finish)))
    parsed = sdk_client(completion.model_dump(mode="json"), stream=False).chat.completions.create(
        model="m", messages=[]
    )
    return parsed.choices[0]


def streamed(events: list[object], finish: str = "tool_calls", **fail: Exception) -> str:
    return asyncio.run(sse_text(ChatReply("m", TOOLS).chunks(Recorded(events, finish, **fail), False)))


def test_history_calls_and_results_become_chat_messages() -> None:
    messages = history(
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    )
    assert messages == [
        ChatMessage("user", "Weather in Paris?"),
        ChatMessage(
            "assistant",
            "",
            (ToolCall("call_1", "get_weather", {"city": "Paris"}), ToolCall("call_2", "now", {})),
        ),
        ChatMessage("tool", "sunny", tool_call_id="call_1", name="get_weather"),
        ChatMessage("tool", "noon", tool_call_id="call_2", name="now"),
    ]


@pytest.mark.parametrize(
    "entry",
    [
        {"function": {"name": "f", "arguments": "{}"}},  # no id
        {"id": "c", "type": "function"},  # no function
        {"id": "c", "type": "function", "function": {"arguments": "{}"}},  # no name
        {"id": "c", "type": "code", "function": {"name": "f", "arguments": "{}"}},
        "f()",
    ],
)
def test_a_malformed_tool_calls_entry_is_a_validation_error(entry: object) -> None:
    with pytest.raises(ValidationError, match=r"messages\.0\.tool_calls\.0"):
        request(messages=[{"role": "assistant", "tool_calls": [entry]}])


@pytest.mark.parametrize(("arguments", "problem"), [("{'city': 1}", "not JSON"), ("[1]", "a JSON object")])
def test_history_arguments_that_are_not_a_json_object_are_a_400(arguments: str, problem: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(ApiError, match=rf"messages\[0\]\.tool_calls\[0\]\.function\.arguments: .*{problem}"):
        history({"role": "assistant", "tool_calls": [call]})


def test_a_tool_message_without_a_matching_call_is_a_400() -> None:
    with pytest.raises(ApiError, match=r"messages\[1\]: answers call 'call_9'.*no earlier") as caught:
        history({"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_9", "content": "x"})
    assert caught.value.kind == "invalid_request"
    with pytest.raises(ApiError, match=r"messages\[0\]: a tool message needs tool_call_id"):
        history({"role": "tool", "content": "x"})


def test_tool_choice_maps_to_a_plan() -> None:
    tools, plan = constraint(request(tools=[WEATHER]))
    assert tools == tuple(TOOLS)
    assert plan is not None and (plan.kind, plan.mode, plan.parallel) == ("tools", "auto", False)
    _, plan = constraint(request(tools=[WEATHER], parallel_tool_calls=True))
    assert plan is not None and plan.parallel

    named = {"type": "function", "function": {"name": "get_weather"}}
    _, plan = constraint(request(tools=[WEATHER], tool_choice=named, parallel_tool_calls=False))
    assert plan is not None and (plan.mode, plan.name, plan.parallel) == ("named", "get_weather", False)

    _, plan = constraint(request(tools=[WEATHER], tool_choice="required"))
    assert plan is not None and plan.mode == "required"

    assert constraint(request(tools=[WEATHER], tool_choice="none")) == ((), None)
    assert constraint(request()) == ((), None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            r"tool_choice: 'nope' is not a declared tool \(declared: get_weather\)",
        ),
        ({"tool_choice": "required"}, "tool_choice: asks for a tool call but no tools are declared"),
        ({"tools": [WEATHER, WEATHER]}, "'get_weather' is declared twice"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": ["not", "a", "schema"]}}
                ]
            },
            r"tools\[0\]\.function\.parameters: not a usable JSON Schema",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}},
            r"response_format\.json_schema\.schema: not a usable JSON Schema",
        ),
    ],
)
def test_bad_tools_and_formats_are_a_400_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError, match=message) as caught:
        constraint(request(**fields))
    assert caught.value.kind == "invalid_request"


def test_response_format_constrains_the_answer_to_json() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    _, plan = constraint(
        request(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": schema, "strict": True},
            }
        )
    )
    assert plan is not None and (plan.kind, plan.schema) == ("json", schema)
    _, plan = constraint(request(response_format={"type": "json_object"}))
    assert plan is not None and (plan.kind, plan.schema) == ("json", None)
    assert constraint(request(response_format={"type": "text"})) == ((), None)
    _, plan = constraint(request(tools=[WEATHER], response_format={"type": "json_object"}))
    assert plan is not None and plan.kind == "tools"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"n": 2}, "n"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"stop": ["x"] * 33}, "stop"),
        ({"stop": "x" * 257}, "stop.0"),
    ],
)
def test_options_the_server_cannot_honour_are_refused(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as caught:
        request(**fields)
    assert ".".join(str(part) for part in caught.value.errors()[0]["loc"]) == where


def test_neutral_values_of_unsupported_options_pass() -> None:
    neutral = request(
        logprobs=False, top_logprobs=0, logit_bias={}, presence_penalty=0, frequency_penalty=0.0,
        modalities=["text"], seed=2**63 - 1, stop="x", user="u", store=False, metadata={"a": "b"},
    )  # fmt: skip
    assert neutral.stop == ["x"] and neutral.seed == 2**63 - 1


def test_an_answer_of_only_calls_has_null_content_and_canonical_arguments() -> None:
    choice = answer(ONE_CALL)
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert CALL_ID.match(call.id) and call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city":"Paris"}')


def test_text_before_calls_is_kept_and_each_call_has_its_own_id() -> None:
    events = [
        TextDelta("Checking both. "),
        *ONE_CALL[1:],
        CallStart(1, "get_weather"),
        CallEnd(1, "get_weather", {"city": "Rome"}),
    ]
    choice = answer(events)
    assert choice.message.content == "Checking both."
    ids = [call.id for call in choice.message.tool_calls]
    assert len(set(ids)) == 2 and all(CALL_ID.match(i) for i in ids)
    assert [json.loads(c.function.arguments) for c in choice.message.tool_calls] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]


def test_a_call_cut_off_by_max_tokens_is_left_out() -> None:
    choice = answer([TextDelta("Let me see."), CallStart(0, "get_weather"), CallArgs(0, '{"ci')], "length")
    assert (choice.finish_reason, choice.message.content, choice.message.tool_calls) == (
        "length",
        "Let me see.",
        None,
    )


def test_a_name_in_the_wrong_case_is_repaired_and_an_undeclared_one_is_an_error() -> None:
    choice = answer([CallStart(0, "Get_Weather"), CallEnd(0, "Get_Weather", {"city": "Oslo"})])
    assert choice.message.tool_calls[0].function.name == "get_weather"
    with pytest.raises(ApiError, match="'rm_rf', which is not a declared tool") as caught:
        answer([CallStart(0, "rm_rf"), CallEnd(0, "rm_rf", {})])
    assert caught.value.kind == "server"


def test_an_engine_failure_mid_answer_is_an_api_error_not_a_crash() -> None:
    reply = ChatReply("m", TOOLS)
    with pytest.raises(ApiError, match="generation failed: worker died") as caught:
        asyncio.run(reply.completion(Recorded([TextDelta("Hel")], fail=EngineError("worker died"))))
    assert caught.value.kind == "server"


def test_plain_text_answers_are_unchanged() -> None:
    choice = answer([TextDelta("Hello"), TextDelta(" world"), TextDelta("\n")], "stop", tools=[])
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == (
        "Hello world\n",
        None,
        "stop",
    )


def data_lines(sse: str) -> list[Any]:
    return [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: {")]


def test_streamed_call_chunks_name_first_then_argument_fragments() -> None:
    chunks = data_lines(streamed(ONE_CALL))
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"][0]["delta"].get("tool_calls")
    ]
    first, *fragments = calls
    assert CALL_ID.match(first["id"])
    assert first == {
        "index": 0,
        "id": first["id"],
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert fragments == [
        {"index": 0, "function": {"arguments": '{"city": '}},
        {"index": 0, "function": {"arguments": '"Paris"}'}},
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_sdk_stream_helper_reassembles_streamed_calls() -> None:
    events = [*ONE_CALL, CallStart(1, "get_weather"), CallEnd(1, "get_weather", {"city": "Rome"})]
    sse = streamed(events)
    client = sdk_client(sse, stream=True)
    with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "x"}]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]
    assert calls[1].function.arguments == canonical({"city": "Rome"})  # sent whole: no fragments came
    assert len({c.id for c in calls}) == 2
    assert sse.endswith("data: [DONE]\n\n")


def test_a_failure_mid_stream_ends_with_an_error_in_openais_envelope() -> None:
    sse = streamed([TextDelta("Hi")], fail=EngineError("worker died"))
    assert data_lines(sse)[-1] == {
        "error": {"message": "worker died", "type": "server_error", "param": None, "code": None}
    }
    assert "[DONE]" not in sse
