"""Anthropic messages with tools: requests to engine messages and plans, events to messages and SSE.

Answers are parsed by the real `anthropic` SDK: its models, and `messages.stream()` accumulating a
recorded byte stream, as Claude Code's own client does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from pydantic import ValidationError

from inference_server.anthropic import protocol as p
from inference_server.anthropic.serving import Reply, constraint, system_prompt, to_messages
from inference_server.engines.base import ChatMessage, EngineError, ToolCall, ToolSpec
from inference_server.errors import ApiError
from inference_server.toolcalls import CallArgs, CallEnd, CallStart, TextDelta
from tests.fixtures.recorded_stream import Recorded, replaying, sse_text

CLAUDE_CODE = json.loads((Path(__file__).parents[1] / "fixtures" / "claude_code_request.json").read_text())
SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}
READ = {"name": "Read", "description": "Read a file", "input_schema": SCHEMA}
TOOLS = [ToolSpec("Read", "Read a file", SCHEMA)]
TOOLU = re.compile(r"^toolu_[0-9a-f]{24,}$")
ONE_CALL = [
    TextDelta("I will read it.\n"),
    CallStart(0, "Read"),
    CallArgs(0, '{"path"'),
    CallArgs(0, ': "a.txt"}'),
    CallEnd(0, "Read", {"path": "a.txt"}),
]


def request(**fields: Any) -> p.MessagesRequest:
    return p.MessagesRequest.model_validate(
        {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}], **fields}
    )


def history(*messages: dict[str, Any], **fields: Any) -> list[ChatMessage]:
    return to_messages(request(messages=list(messages), **fields), strip_billing_header=True)


def sdk_client(body: str | dict[str, Any], *, stream: bool) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url="http://test",
        api_key="k",
        http_client=replaying(body, stream=stream, http=httpx2),
        max_retries=0,
    )


def message(events: list[object], finish: str = "tool_calls") -> Any:
    reply = asyncio.run(Reply("msg_1", "m", TOOLS).message(Recorded(events, finish)))
    return sdk_client(reply.model_dump(mode="json"), stream=False).messages.create(
        model="m", max_tokens=9, messages=[]
    )


def streamed(events: list[object], finish: str = "tool_calls", **fail: Exception) -> str:
    return asyncio.run(sse_text(Reply("msg_1", "m", TOOLS).events(Recorded(events, finish, **fail))))


def replayed(sse: str) -> tuple[list[Any], Any]:
    """Every event the SDK parsed, and the message it accumulated."""
    client = sdk_client(sse, stream=True)
    with client.messages.stream(
        model="m", max_tokens=9, messages=[{"role": "user", "content": "x"}]
    ) as stream:
        events = list(stream)
        return events, stream.get_final_message()


def test_claude_codes_real_request_is_accepted_with_all_its_tools() -> None:
    body = p.MessagesRequest.model_validate(CLAUDE_CODE)
    tools, plan = constraint(body)
    assert [t.name for t in tools] == [t["name"] for t in CLAUDE_CODE["tools"]]
    assert plan is not None and (plan.kind, plan.mode, plan.parallel) == ("tools", "auto", False)
    messages = to_messages(body, strip_billing_header=True)
    assert [m.role for m in messages] == ["system", "user", "system"]
    assert "x-anthropic-billing-header" not in messages[0].content
    assert messages[2].content.startswith("# Environment")


def test_tool_use_and_tool_result_blocks_become_calls_and_tool_turns() -> None:
    messages = history(
        {"role": "user", "content": "Read a.txt and b.txt"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.txt"}},
                {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"path": "b.txt"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "alpha"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "is_error": True,
                    "content": [{"type": "text", "text": "no such file"}],
                    "cache_control": {"type": "ephemeral"},
                },
                {"type": "text", "text": "Go on."},
            ],
        },
        system=[{"type": "text", "text": "Be brief."}],
    )
    assert messages == [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Read a.txt and b.txt"),
        ChatMessage(
            "assistant",
            "Reading.",
            (ToolCall("toolu_1", "Read", {"path": "a.txt"}), ToolCall("toolu_2", "Read", {"path": "b.txt"})),
        ),
        ChatMessage("tool", "alpha", tool_call_id="toolu_1", name="Read"),
        ChatMessage("tool", "Error: no such file", tool_call_id="toolu_2", name="Read"),
        ChatMessage("user", "Go on."),
    ]


def test_media_blocks_become_markers() -> None:
    messages = history(
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "base64", "data": "x"}},
                {"type": "text", "text": "ok?"},
            ],
        }
    )
    assert messages == [ChatMessage("user", "[image]\nok?")]


def test_a_tool_result_without_a_matching_call_is_a_400() -> None:
    with pytest.raises(ApiError, match=r"messages\[0\]\.content\[0\]: answers call 'toolu_9'") as caught:
        history(
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}
        )
    assert caught.value.kind == "invalid_request"


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ({"type": "tool_use", "name": "Read", "input": {}}, "needs an id, a name and an input object"),
        (
            {"type": "tool_use", "id": "t", "name": "Read", "input": "a.txt"},
            "needs an id, a name and an input",
        ),
        ({"type": "tool_result", "content": "x"}, "needs the tool_use_id"),
    ],
)
def test_malformed_tool_blocks_are_validation_errors(block: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        request(messages=[{"role": "assistant", "content": [block]}])


def test_what_claude_code_sends_and_no_local_model_can_use_is_accepted() -> None:
    body = request(
        thinking={"type": "adaptive", "display": "omitted"},
        output_config={"effort": "medium"},
        context_management={"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        metadata={"user_id": "u"},
        max_tokens=128000,
        tools=[{**READ, "defer_loading": True, "cache_control": {"type": "ephemeral"}, "strict": True}],
    )
    assert constraint(body)[1] is not None and body.max_tokens == 128000


def test_server_tools_are_left_out_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="inference_server"):
        tools, _ = constraint(request(tools=[READ, {"type": "web_search_20250305", "name": "web_search"}]))
    assert [t.name for t in tools] == ["Read"]
    assert "web_search" in caplog.text


def test_tool_choice_maps_to_a_plan() -> None:
    _, plan = constraint(request(tools=[READ], tool_choice={"type": "any"}))
    assert plan is not None and (plan.mode, plan.parallel) == ("required", False)  # one call by default
    _, plan = constraint(
        request(tools=[READ], tool_choice={"type": "any", "disable_parallel_tool_use": False})
    )
    assert plan is not None and (plan.mode, plan.parallel) == ("required", True)
    _, plan = constraint(
        request(tools=[READ], tool_choice={"type": "tool", "name": "Read", "disable_parallel_tool_use": True})
    )
    assert plan is not None and (plan.mode, plan.name, plan.parallel) == ("named", "Read", False)
    _, plan = constraint(
        request(tools=[READ], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    )
    assert plan is not None and (plan.mode, plan.parallel) == ("auto", False)
    assert constraint(request(tools=[READ], tool_choice={"type": "none"})) == ((), None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"tools": [READ], "tool_choice": {"type": "tool", "name": "Write"}},
            "'Write' is not a declared tool",
        ),
        ({"tool_choice": {"type": "any"}}, "asks for a tool call but no tools are declared"),
        ({"tools": [{**READ, "input_schema": 7}]}, r"tools\[0\]\.input_schema: not a usable JSON Schema"),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": ["x"]}}},
            r"output_config\.format\.schema: not a usable JSON Schema",
        ),
    ],
)
def test_bad_tools_and_formats_are_a_400_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError, match=message) as caught:
        constraint(request(**fields))
    assert caught.value.kind == "invalid_request"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"tools": [{"name": "Read"}]}, "a custom tool needs an input_schema"),
        ({"top_k": 5}, "not supported by this server"),
        ({"stop_sequences": ["x"] * 33}, "at most 32 items"),
    ],
)
def test_requests_the_server_cannot_serve_are_validation_errors(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        request(**fields)


def test_structured_outputs_constrain_the_answer_in_both_spellings() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    for fields in (
        {"output_config": {"effort": "low", "format": {"type": "json_schema", "schema": schema}}},
        {"output_format": {"type": "json_schema", "schema": schema}},
    ):
        _, plan = constraint(request(**fields))
        assert plan is not None and (plan.kind, plan.schema) == ("json", schema)


def test_billing_header_line_is_stripped_only_when_configured() -> None:
    blocks = [p.Block(type="text", text="x-anthropic-billing-header: cc=1;\nYou are Claude Code.")]
    assert system_prompt(blocks, strip_billing_header=True) == "You are Claude Code."
    assert system_prompt(blocks, strip_billing_header=False).startswith("x-anthropic-billing-header")


def test_an_answer_with_a_call_is_text_then_tool_use() -> None:
    reply = message(ONE_CALL)
    assert reply.stop_reason == "tool_use"
    text, call = reply.content
    assert (text.type, text.text) == ("text", "I will read it.")
    assert call.type == "tool_use" and TOOLU.match(call.id)
    assert (call.name, call.input) == ("Read", {"path": "a.txt"})


def test_a_call_cut_off_by_max_tokens_is_left_out() -> None:
    reply = message([CallStart(0, "Read"), CallArgs(0, '{"pa')], "length")
    assert reply.stop_reason == "max_tokens"
    assert [(b.type, b.text) for b in reply.content] == [("text", "")]


def test_an_engine_failure_mid_answer_is_an_api_error() -> None:
    reply = Reply("msg_1", "m", TOOLS)
    with pytest.raises(ApiError, match="generation failed: worker died") as caught:
        asyncio.run(reply.message(Recorded([TextDelta("Hel")], fail=EngineError("worker died"))))
    assert caught.value.kind == "server"


def test_the_sdk_stream_reassembles_text_and_tool_use_blocks() -> None:
    events, final = replayed(
        streamed([*ONE_CALL, CallStart(1, "Read"), CallEnd(1, "Read", {"path": "b.txt"})])
    )
    assert final.stop_reason == "tool_use"
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "I will read it."
    assert [(b.name, b.input) for b in final.content[1:]] == [
        ("Read", {"path": "a.txt"}),
        ("Read", {"path": "b.txt"}),
    ]
    assert len({b.id for b in final.content[1:]}) == 2 and all(TOOLU.match(b.id) for b in final.content[1:])
    starts = [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == [(0, "text"), (1, "tool_use"), (2, "tool_use")] and stops == [0, 1, 2]


def test_streamed_tool_use_starts_with_empty_input_then_json_fragments() -> None:
    sse = streamed(ONE_CALL[1:])
    kinds = [line[7:] for line in sse.splitlines() if line.startswith("event: ")]
    assert kinds == [
        "message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    data = [json.loads(line[6:]) for line in sse.splitlines() if line.startswith("data: ")]
    assert data[2]["content_block"] == {
        "type": "tool_use",
        "id": data[2]["content_block"]["id"],
        "name": "Read",
        "input": {},
    }
    assert [d["delta"] for d in data[3:5]] == [
        {"type": "input_json_delta", "partial_json": '{"path"'},
        {"type": "input_json_delta", "partial_json": ': "a.txt"}'},
    ]


def test_a_plain_answer_streams_one_text_block_and_an_empty_one_still_has_a_block() -> None:
    _, final = replayed(streamed([TextDelta("Hel"), TextDelta("lo")], "stop"))
    assert [(b.type, b.text) for b in final.content] == [
        ("text", "Hello")
    ] and final.stop_reason == "end_turn"
    _, final = replayed(streamed([], "stop"))
    assert [(b.type, b.text) for b in final.content] == [("text", "")]


def test_a_failure_mid_stream_ends_with_an_error_event() -> None:
    sse = streamed([TextDelta("Hi")], fail=EngineError("worker died"))
    assert sse.endswith(
        'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"worker died"}}\n\n'
    )
