"""The incremental call parser: every chunking of an output gives the one-shot parse."""

from __future__ import annotations

import json

import pytest

from inference_server.toolcalls.families import FAMILIES, GRANITE, HERMES, LLAMA3, MISTRAL, PHI4, ToolFamily
from inference_server.toolcalls.parser import CallArgs, CallEnd, CallStart, Event, TextDelta

READ = {"file_path": "/etc/hosts", "nested": [1, {"brace": "}{", "quote": 'say "hi"\\'}], "n": -2.5e3}
SAMPLES: list[tuple[ToolFamily, str, str, list[tuple[str, dict]]]] = [
    (
        HERMES,
        'Let me look.\n<tool_call>\n{"name": "Read", "arguments": '
        + json.dumps(READ)
        + '}\n</tool_call>\n<tool_call>\n{"name": "Bash", "arguments": {"command": "ls -la"}}\n</tool_call>',
        "Let me look.",
        [("Read", READ), ("Bash", {"command": "ls -la"})],
    ),
    (
        MISTRAL,
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}, '
        '{"name": "add", "arguments": {"a": 1, "b": 2}, "id": "000000001"}]',
        "",
        [("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})],
    ),
    (
        PHI4,
        'Sure.<|tool_call|>[{"name": "add", "arguments": {"x": 1.5, "y": [true, null]}}]<|/tool_call|>',
        "Sure.",
        [("add", {"x": 1.5, "y": [True, None]})],
    ),
    (
        GRANITE,
        '<|tool_call|>[{"name": "search", "arguments": {"q": "a < b"}}]',
        "",
        [("search", {"q": "a < b"})],
    ),
    (
        LLAMA3,
        ' {"name": "get_weather", "parameters": {"city": "Oslo", "days": 3}}',
        "",
        [("get_weather", {"city": "Oslo", "days": 3})],
    ),
    (
        LLAMA3,
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}',
        "",
        [("get_weather", {"city": "Oslo"})],
    ),
    (
        HERMES,
        "No tool needed: 2 < 3 and <tool is not a call.\n",
        "No tool needed: 2 < 3 and <tool is not a call.\n",
        [],
    ),
    (LLAMA3, 'The answer is {"name": "x"}', 'The answer is {"name": "x"}', []),
]


def run(family: ToolFamily, chunks: list[str]) -> list[Event]:
    parser = family.new_parser()
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events + parser.close()


def summary(events: list[Event]) -> tuple[str, list[tuple[int, str]], dict[int, str], list[CallEnd]]:
    """What a client reassembles: the text, the calls started, each call's argument text, the ends."""
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    starts = [(e.index, e.name) for e in events if isinstance(e, CallStart)]
    args: dict[int, str] = {}
    for e in events:
        if isinstance(e, CallArgs):
            args[e.index] = args.get(e.index, "") + e.fragment
    return text, starts, args, [e for e in events if isinstance(e, CallEnd)]


@pytest.mark.parametrize(("family", "output", "text", "calls"), SAMPLES)
def test_one_shot_parse_finds_the_text_and_the_calls(family, output, text, calls):
    got_text, starts, args, ends = summary(run(family, [output]))
    assert got_text == text
    assert starts == [(i, name) for i, (name, _) in enumerate(calls)]
    assert [(e.name, e.arguments) for e in ends] == calls
    assert {i: json.loads(a) for i, a in args.items()} == {
        i: arguments for i, (_, arguments) in enumerate(calls)
    }


@pytest.mark.parametrize(("family", "output", "text", "calls"), SAMPLES)
def test_every_two_way_split_gives_the_one_shot_result(family, output, text, calls):
    whole = summary(run(family, [output]))
    for at in range(len(output) + 1):
        assert summary(run(family, [output[:at], output[at:]])) == whole, f"split at {at}"


@pytest.mark.parametrize(("family", "output", "text", "calls"), SAMPLES)
def test_character_by_character_streams_the_arguments_in_fragments(family, output, text, calls):
    events = run(family, list(output))
    assert summary(events) == summary(run(family, [output]))
    for index, (_, arguments) in enumerate(calls):
        fragments = [e for e in events if isinstance(e, CallArgs) and e.index == index]
        assert len(fragments) == len(json.dumps(arguments)), "one fragment per character fed"


def test_call_starts_once_its_name_is_complete_before_any_argument():
    parser = HERMES.new_parser()
    assert parser.feed('<tool_call>\n{"name": "Re') == []
    assert parser.feed('ad", "arguments": {"file') == [CallStart(0, "Read"), CallArgs(0, '{"file')]
    assert parser.feed('_path": "/x"}}\n</tool_call>') == [
        CallArgs(0, '_path": "/x"}'),
        CallEnd(0, "Read", {"file_path": "/x"}),
    ]
    assert parser.close() == []


def test_text_that_could_open_a_call_is_held_back_until_it_cannot():
    parser = HERMES.new_parser()
    assert parser.feed("Hello <tool") == [TextDelta("Hello")]
    assert parser.feed("box>") == [TextDelta(" <toolbox>")]


def test_a_block_that_never_names_a_tool_goes_back_out_as_text():
    text, starts, _, _ = summary(run(HERMES, ["Look: <tool_call> is how I would call one."]))
    assert starts == []
    assert text == "Look: <tool_call> is how I would call one."


def test_a_call_cut_short_ends_with_the_arguments_that_parse():
    _, starts, args, ends = summary(
        run(HERMES, ['<tool_call>\n{"name": "Write", "arguments": {"path": "/a", "body": "hel'])
    )
    assert starts == [(0, "Write")]
    assert args == {0: '{"path": "/a", "body": "hel'}
    assert ends == [CallEnd(0, "Write", {"path": "/a", "body": "hel"})]


def test_whitespace_around_calls_is_not_text():
    text, _, _, ends = summary(
        run(HERMES, ['\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n\n'])
    )
    assert text == ""
    assert ends == [CallEnd(0, "a", {})]


def test_every_family_has_a_parser_and_renders_calls_it_parses_back():
    from inference_server.engines.base import ToolCall

    calls = (ToolCall("call_1", "get_weather", {"city": "Paris"}), ToolCall("call_2", "add", {"a": 1}))
    for family in FAMILIES:
        shown = calls if family.parallel else calls[:1]
        _, _, _, ends = summary(run(family, [family.render_calls(shown)]))
        assert [(e.name, e.arguments) for e in ends] == [(c.name, c.arguments) for c in shown], family.name
