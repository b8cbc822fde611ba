"""Ollama chat with tools: Ollama's history to engine messages, and call events to Ollama's objects.

Answers are parsed by the real `ollama` client (its models, over recorded NDJSON).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import ollama
import pytest

from inference_server.engines.base import EngineError, ToolSpec
from inference_server.ollama import protocol as p
from inference_server.ollama.serving import Reply, Timer, to_messages
from inference_server.toolcalls import TextDelta
from tests.fixtures.recorded_stream import Recorded, sse_text, weather_call_events

PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [ToolSpec("get_weather", "Weather in a city", PARAMETERS)]
ONE_CALL = weather_call_events()


class _Loaded:
    state, load_s = "loaded", 0.0


def _timer() -> Timer:
    timer = Timer(_Loaded())  # type: ignore[arg-type]
    timer.started()
    return timer


def client(body: str) -> ollama.Client:
    """The ollama client, answered with `body` (NDJSON lines or one object)."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body.encode()))
    return ollama.Client(host="http://test", transport=transport)


def test_history_calls_get_ids_and_results_answer_them_by_tool_name() -> None:
    body = p.ChatRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "Weather in Paris and the time?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"function": {"name": "clock", "arguments": {}}},
                        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    ],
                },
                {"role": "tool", "tool_name": "get_weather", "content": "18 degrees"},
                {"role": "tool", "content": "noon"},
            ],
        }
    )
    _, assistant, weather, clock = to_messages(body.messages)
    clock_call, weather_call = assistant.tool_calls
    assert weather_call.arguments == {"city": "Paris"} and clock_call.id != weather_call.id
    assert (weather.tool_call_id, weather.name) == (weather_call.id, "get_weather")
    assert (clock.tool_call_id, clock.name) == (clock_call.id, "clock")  # no tool_name: the oldest left


def test_a_streamed_call_is_one_chunk_with_arguments_as_an_object() -> None:
    lines = asyncio.run(sse_text(Reply("chat", "m", TOOLS).lines(Recorded(ONE_CALL), _timer())))
    chunks = list(client(lines).chat("m", messages=[], stream=True))
    calls = [c.message.tool_calls for c in chunks if c.message.tool_calls]
    assert len(calls) == 1 and calls[0][0].function.name == "get_weather"
    assert calls[0][0].function.arguments == {"city": "Paris"}
    assert chunks[-1].done and chunks[-1].done_reason == "stop"
    assert "".join(c.message.content or "" for c in chunks) == ""  # the newline before a call is dropped


def test_a_whole_answer_carries_its_calls_and_counts() -> None:
    whole = asyncio.run(Reply("chat", "m", TOOLS).whole(Recorded(ONE_CALL), _timer()))
    reply = client(json.dumps(whole.model_dump(mode="json", exclude_none=True))).chat("m", messages=[])
    assert reply.message.tool_calls is not None
    assert [(c.function.name, dict(c.function.arguments)) for c in reply.message.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert (reply.prompt_eval_count, reply.eval_count, reply.done_reason) == (11, len(ONE_CALL), "stop")


def test_a_failure_mid_answer_is_an_error_line_the_client_raises() -> None:
    events: list[Any] = [TextDelta("Hel")]
    recorded = Recorded(events, fail=EngineError("worker died"))
    lines = asyncio.run(sse_text(Reply("generate", "m", ()).lines(recorded, _timer())))
    with pytest.raises(ollama.ResponseError, match="worker died"):
        list(client(lines).generate("m", "hi", stream=True))
