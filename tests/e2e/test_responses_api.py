"""The Responses API through the official `openai` SDK, against the session's real server and model.

Calls are forced (`tool_choice: required`) so the round trips do not depend on what a 135M model
decides; what is checked is what the SDK receives: items, ids, statuses, event order, errors.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "minLength": 1}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
ASK = "What is the weather in Paris? Use the tool."
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
SMALL: dict[str, Any] = {"model": "smollm2", "temperature": 0}
# an answer held to this ends well inside its budget, so a stream reaches response.completed
COLOUR = {
    "format": {
        "type": "json_schema",
        "name": "colour",
        "schema": {
            "type": "object",
            "properties": {"colour": {"enum": ["red", "blue"]}},
            "required": ["colour"],
        },
    }
}


def forced_call(oai: openai.OpenAI, **fields: Any) -> Any:
    response = oai.responses.create(
        **SMALL, input=ASK, tools=[WEATHER], tool_choice="required", max_output_tokens=60, **fields
    )
    assert response.status == "completed"
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    return response, call


def final_text(response: Any) -> str:
    assert response.status in ("completed", "incomplete")
    assert [item.type for item in response.output] == ["message"]
    return str(response.output_text)


def test_text_response_with_usage_is_stored_and_retrievable(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        **SMALL, input="Name a colour.", instructions="Be brief.", max_output_tokens=8
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.output_text and response.output[0].role == "assistant"  # type: ignore[union-attr]
    assert response.usage and response.usage.input_tokens > 0 and 0 < response.usage.output_tokens <= 8
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert oai.responses.retrieve(response.id).output_text == response.output_text


def test_max_output_tokens_cut_is_incomplete(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        **SMALL, input="Tell me a long story about a dragon.", max_output_tokens=3
    )
    assert response.status == "incomplete"
    assert response.incomplete_details and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]


def test_function_call_round_trip_with_the_whole_conversation(oai: openai.OpenAI) -> None:
    _, call = forced_call(oai, store=False)
    history = [
        {"role": "user", "content": ASK},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ]
    answer = oai.responses.create(
        **SMALL, input=history, tools=[WEATHER], tool_choice="none", max_output_tokens=16
    )
    assert final_text(answer)


def test_function_call_round_trip_through_previous_response_id(oai: openai.OpenAI) -> None:
    first, call = forced_call(oai)
    result = [{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}]
    answer = oai.responses.create(
        **SMALL,
        input=result,
        previous_response_id=first.id,
        tools=[WEATHER],
        max_output_tokens=16,
        tool_choice="none",
    )
    assert answer.previous_response_id == first.id and final_text(answer)
    # the follow-up is itself stored: a further turn sees both earlier ones
    again = oai.responses.create(
        **SMALL, input="Thanks.", previous_response_id=answer.id, max_output_tokens=4
    )
    assert again.usage and answer.usage and again.usage.input_tokens > answer.usage.input_tokens


def test_text_format_json_schema_constrains_the_answer(oai: openai.OpenAI) -> None:
    response = oai.responses.create(
        **SMALL,
        input="Describe a person as JSON.",
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
        max_output_tokens=60,
    )
    jsonschema.validate(json.loads(response.output_text), PERSON)


def test_stream_helper_yields_typed_events_and_the_completed_response(oai: openai.OpenAI) -> None:
    request = {**SMALL, "input": "Name a colour.", "text": COLOUR, "max_output_tokens": 30}
    with oai.responses.stream(**request) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert deltas and final.output_text == deltas and final.status == "completed"
    assert oai.responses.retrieve(final.id).output_text == deltas


def test_streamed_function_call_has_argument_deltas(oai: openai.OpenAI) -> None:
    request = {**SMALL, "input": ASK, "tools": [WEATHER], "tool_choice": "required", "max_output_tokens": 60}
    with oai.responses.stream(**request) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "function_call"  # type: ignore[union-attr]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds[-3:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])


def test_unknown_previous_response_id_is_openai_404(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.responses.create(**SMALL, input="hi", previous_response_id="resp_nope", max_output_tokens=2)
    assert "previous_response_id" in missing.value.message
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve("resp_nope")


def test_store_false_is_not_retrievable_and_delete_forgets(oai: openai.OpenAI) -> None:
    unstored = oai.responses.create(**SMALL, input="hi", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)
    kept = oai.responses.create(**SMALL, input="hi", max_output_tokens=2)
    oai.responses.delete(kept.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(kept.id)


@pytest.mark.parametrize(
    ("fields", "status", "names"),
    [
        ({"model": "no-such-model"}, 404, "no-such-model"),
        ({"input": ""}, 400, "input"),
        ({"input": 7}, 400, "input"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, 400, "input.items.0"),
        ({"tools": [{"type": "web_search"}]}, 400, "tools.0"),
        ({"background": True}, 400, "background"),
        ({"max_output_tokens": "many"}, 400, "max_output_tokens"),
        ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}, 400, "call_x"),
        (
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 5}}}},
            400,
            "text.format",
        ),
    ],
    ids=lambda value: json.dumps(value) if isinstance(value, dict) else str(value),
)
def test_bad_requests_are_4xx_in_openai_envelope(
    oai: openai.OpenAI, fields: dict[str, Any], status: int, names: str
) -> None:
    request = {"model": "smollm2", "input": "hi", "max_output_tokens": 2, **fields}
    with pytest.raises(openai.APIStatusError) as refused:
        oai.responses.create(**request)
    assert refused.value.status_code == status
    error = refused.value.body
    assert isinstance(error, dict) and set(error) >= {"message", "type"}, error
    assert names in error["message"]
