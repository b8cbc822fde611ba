"""Responses API: input items to engine messages, the response store's bounds, and answers as the real
`openai` SDK parses them (its models, and its stream helper over recorded SSE)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest

from inference_server.engines.base import ChatMessage, EngineError, ToolCall, ToolSpec
from inference_server.errors import ApiError
from inference_server.responses import protocol as p
from inference_server.responses.serving import Reply, to_messages
from inference_server.responses.store import ResponseStore, stored
from inference_server.toolcalls import TextDelta
from tests.fixtures.recorded_stream import Recorded, replaying, sse_text, weather_call_events

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [ToolSpec("get_weather", "Weather in a city", WEATHER)]
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}
TEXT_THEN_CALL = weather_call_events("Let me look.")


def request(**fields: Any) -> p.ResponsesRequest:
    return p.ResponsesRequest.model_validate({"model": "m", "input": "hi", **fields})


def turns(*items: dict[str, Any], prior: tuple[ChatMessage, ...] = ()) -> list[ChatMessage]:
    return to_messages(request(input=list(items)).input, prior)


def test_string_input_is_one_user_turn() -> None:
    assert to_messages("hello", ()) == [ChatMessage("user", "hello")]


def test_message_items_keep_roles_and_join_text_parts() -> None:
    parts = [{"type": "input_text", "text": "Look:"}, {"type": "input_image", "image_url": "data:,"}]
    assert turns(
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": parts},
        {"role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
    ) == [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Look:\n[input_image]"),
        ChatMessage("assistant", "A cat."),
    ]


def test_function_calls_join_the_assistant_turn_and_outputs_name_their_call() -> None:
    second = {**CALL, "call_id": "call_2", "arguments": ""}
    result = {
        "type": "function_call_output",
        "call_id": "call_2",
        "output": [{"type": "input_text", "text": "Sunny"}],
    }
    history = turns(
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking."},
        CALL,
        second,
        {"type": "reasoning", "id": "rs_1", "summary": []},
        result,
    )
    assert history == [
        ChatMessage("user", "Weather?"),
        ChatMessage(
            "assistant",
            "Checking.",
            (ToolCall("call_1", "get_weather", {"city": "Paris"}), ToolCall("call_2", "get_weather", {})),
        ),
        ChatMessage("tool", "Sunny", tool_call_id="call_2", name="get_weather"),
    ]


def test_a_call_after_a_user_turn_opens_an_assistant_turn() -> None:
    assert turns({"role": "user", "content": "Weather?"}, CALL)[1] == ChatMessage(
        "assistant", "", (ToolCall("call_1", "get_weather", {"city": "Paris"}),)
    )


def test_an_output_may_answer_a_call_of_the_previous_response() -> None:
    prior = (ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", {"city": "Paris"}),)),)
    output = {"type": "function_call_output", "call_id": "call_1", "output": "Sunny"}
    assert turns(output, prior=prior) == [
        ChatMessage("tool", "Sunny", tool_call_id="call_1", name="get_weather")
    ]


@pytest.mark.parametrize(
    ("items", "names"),
    [
        (
            [{"type": "function_call_output", "call_id": "call_9", "output": "x"}],
            "input[0]: answers call 'call_9'",
        ),
        ([{**CALL, "arguments": "{city"}], "input[0].arguments: not JSON"),
        ([{**CALL, "arguments": "[1]"}], "input[0].arguments: must be a JSON object"),
        ([{"type": "reasoning", "id": "rs_1"}], "input: no message"),
    ],
)
def test_bad_items_are_400s_naming_the_item(items: list[dict[str, Any]], names: str) -> None:
    with pytest.raises(ApiError) as refused:
        turns(*items)
    assert refused.value.kind == "invalid_request" and names in refused.value.message


def entry(ident: str, text: str = "") -> Any:
    response = p.Response.model_validate(
        {
            **BARE,
            "id": ident,
            "output": [
                {"type": "message", "id": "msg_1", "status": "completed", "content": [{"text": text}]}
            ],
        }
    )
    return stored(response, [ChatMessage("user", text)])


BARE: dict[str, Any] = {
    "created_at": 0,
    "status": "completed",
    "instructions": None,
    "max_output_tokens": None,
    "model": "m",
    "parallel_tool_calls": False,
    "previous_response_id": None,
    "store": True,
    "temperature": 1.0,
    "text": {},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "usage": None,
}


def test_store_evicts_the_least_recently_used_beyond_its_count() -> None:
    store = ResponseStore(max_responses=2)
    store.put(entry("a"))
    store.put(entry("b"))
    assert store.get("a") is not None  # now b is the least recently used
    store.put(entry("c"))
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert len(store) == 2


def test_store_evicts_beyond_its_bytes_and_counts_them_back() -> None:
    size = entry("a", "x" * 1000).size
    store = ResponseStore(max_bytes=2 * size + 10)
    for ident in "abc":
        store.put(entry(ident, "x" * 1000))
    assert [store.get(i) is not None for i in "abc"] == [False, True, True]
    assert store.bytes == 2 * size
    store.put(entry("b", "x" * 1000))  # the same id again replaces, not doubles
    assert store.bytes == 2 * size and store.delete("b") and store.bytes == size


def test_store_keeps_nothing_larger_than_itself() -> None:
    store = ResponseStore(max_bytes=100)
    store.put(entry("huge", "x" * 200))
    assert store.get("huge") is None and store.bytes == 0


def reply(**fields: Any) -> tuple[Reply, list[tuple[p.Response, list[ChatMessage]]]]:
    kept: list[tuple[p.Response, list[ChatMessage]]] = []
    body = request(tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER}], **fields)
    history = [ChatMessage("user", "hi")]
    return Reply(
        body, TOOLS, history, lambda response, conversation: kept.append((response, conversation))
    ), kept


def sdk(body: str | dict[str, Any], *, stream: bool) -> openai.OpenAI:
    client = replaying(body, stream=stream, http=httpx)
    return openai.OpenAI(base_url="http://test/v1", api_key="k", http_client=client, max_retries=0)


def test_text_then_call_is_a_message_item_then_a_function_call_item() -> None:
    answer, kept = reply()
    whole = asyncio.run(answer.response(Recorded(TEXT_THEN_CALL)))
    parsed = sdk(whole.model_dump(mode="json"), stream=False).responses.create(model="m", input="hi")
    message, call = parsed.output
    assert message.type == "message" and message.content[0].text == "Let me look."  # type: ignore[union-attr]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and parsed.status == "completed"
    assert parsed.usage and parsed.usage.input_tokens_details.cached_tokens == 3
    ((_, conversation),) = kept
    assert conversation[-1] == ChatMessage(
        "assistant", "Let me look.", (ToolCall(call.call_id, "get_weather", {"city": "Paris"}),)
    )


def test_stream_helper_rebuilds_the_same_items_from_the_events() -> None:
    answer, _ = reply()
    events = asyncio.run(sse_text(answer.events(Recorded(TEXT_THEN_CALL))))
    with sdk(events, stream=True).responses.stream(model="m", input="hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [item.type for item in final.output] == ["message", "function_call"]
    assert final.output_text == "Let me look."


def test_a_call_cut_by_the_budget_is_streamed_but_left_out_of_the_response() -> None:
    cut = TEXT_THEN_CALL[:3]
    answer, kept = reply()
    events = asyncio.run(sse_text(answer.events(Recorded(cut, "length"))))
    data = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: ")]
    assert data[-2]["type"] == "response.output_item.done" and data[-2]["item"]["status"] == "incomplete"
    last = data[-1]
    assert (
        last["type"] == "response.incomplete"
        and last["response"]["incomplete_details"]["reason"] == "max_output_tokens"
    )
    assert [item["type"] for item in last["response"]["output"]] == ["message"]
    assert kept[0][0].status == "incomplete"


def test_a_mid_stream_failure_ends_with_an_error_event_and_stores_nothing() -> None:
    answer, kept = reply()
    events = asyncio.run(
        sse_text(answer.events(Recorded([TextDelta("Hel")], fail=EngineError("worker died"))))
    )
    last = json.loads(events.strip().splitlines()[-1][6:])
    assert last["type"] == "error" and "worker died" in last["message"] and not kept
