"""Chat templates with tools: native templates get them as transformers passes them, others the fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_server.engines.base import ChatMessage, ToolCall, ToolSpec
from inference_server.engines.chat_template import ChatTemplate
from inference_server.toolcalls.families import (
    GRANITE,
    HERMES,
    LLAMA3,
    MISTRAL,
    PHI4,
    family_for_template,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"
QWEN = (FIXTURES / "templates" / "qwen2.5-instruct.jinja").read_text()
SMOLLM2 = (FIXTURES / "templates" / "smollm2-instruct.jinja").read_text()
CLAUDE_CODE_TOOLS = [
    ToolSpec(t["name"], t["description"], t["input_schema"])
    for t in json.loads((FIXTURES / "schemas" / "claude_code_tools.json").read_text())
]
WEATHER = ToolSpec(
    "get_weather",
    "Get the weather. Uses a <b>live</b> feed & more.",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city"}},
        "required": ["city"],
    },
)
# Qwen's template and the fallback write calls and results alike: the fallback copies Hermes/Qwen.
CALLS = (
    '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "<Oslo>"}}\n'
    "</tool_call><|im_end|>"
)
RESULTS = (
    "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n"
    "<tool_response>\n9 C\n</tool_response><|im_end|>"
)
HISTORY = [
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Weather in Paris and Oslo?"),
    ChatMessage(
        "assistant",
        "",
        (
            ToolCall("call_1", "get_weather", {"city": "Paris"}),
            ToolCall("call_2", "get_weather", {"city": "<Oslo>"}),
        ),
    ),
    ChatMessage("tool", "18 C", tool_call_id="call_1", name="get_weather"),
    ChatMessage("tool", "9 C", tool_call_id="call_2", name="get_weather"),
]


@pytest.mark.parametrize(
    ("source", "family"),
    [
        (QWEN, HERMES),
        (SMOLLM2, HERMES),
        (None, HERMES),
        ("{{ tools }}<|start_header_id|>ipython<|end_header_id|>{{ '<|python_tag|>' }}", LLAMA3),
        ("{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]", MISTRAL),
        ("{% if tools %}<|tool|>{% endif %}<|tool_call|>{{ x }}<|/tool_call|>", PHI4),
        ("{% if tools %}<|start_of_role|>tools{% endif %}<|tool_call|>", GRANITE),
        ("<|tool_call|> mentioned, but the template takes no tool list", HERMES),
    ],
)
def test_the_family_comes_from_the_template_source(source, family):
    assert family_for_template(source) is family


def test_a_template_with_tools_gets_them_the_way_transformers_passes_them():
    prompt = ChatTemplate(QWEN, bos_token="", eos_token="<|im_end|>").render(HISTORY, [WEATHER])
    declared = {
        "type": "function",
        "function": {
            "name": WEATHER.name,
            "description": WEATHER.description,
            "parameters": WEATHER.parameters,
        },
    }
    assert "<tools>\n" + json.dumps(declared, ensure_ascii=False) + "\n</tools>" in prompt
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert CALLS in prompt
    assert RESULTS in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_a_template_without_tools_gets_the_fallback():
    prompt = ChatTemplate(SMOLLM2, bos_token="", eos_token="<|im_end|>").render(HISTORY, [WEATHER])
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\nYou can call these tools.")
    line = (
        '{"name":"get_weather","description":"Get the weather.",'
        '"parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}'
    )
    assert f"<tools>\n{line}\n</tools>" in system
    assert CALLS in prompt
    assert RESULTS in prompt
    assert "<|im_start|>tool" not in prompt


def test_the_fallback_keeps_claude_codes_tools_small():
    prompt = ChatTemplate(SMOLLM2, bos_token="", eos_token="").render(
        [ChatMessage("user", "hi")], CLAUDE_CODE_TOOLS
    )
    declared = sum(len(json.dumps(t.parameters)) + len(t.description) for t in CLAUDE_CODE_TOOLS)
    assert len(prompt) < declared / 6  # ~32 KB of tool JSON becomes ~4.5 KB
    for tool in CLAUDE_CODE_TOOLS:
        assert f'{{"name":"{tool.name}",' in prompt


def test_without_tools_a_prompt_renders_as_before():
    messages = [ChatMessage("user", "Hello")]
    template = ChatTemplate(SMOLLM2, bos_token="", eos_token="")
    assert template.render(messages) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )
