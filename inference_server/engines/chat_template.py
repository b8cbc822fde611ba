"""A model's own Jinja chat template, rendered the way llama-server and transformers render it.

llama.cpp's C `llama_chat_apply_template` only pattern-matches well-known templates and drops parts
of them (SmolLM2's default system prompt, for one), so the template text from the GGUF metadata is
rendered with a sandboxed Jinja environment instead.

Tools: a template that takes them (its source mentions `tools`) gets them as transformers passes
them, `[{"type": "function", "function": {name, description, parameters}}]`, with assistant calls as
OpenAI `tool_calls` (arguments as a dict, which Qwen's `| tojson` expects) and tool turns with
`tool_call_id` and `name`. A template without tool support gets the documented fallback (see
toolcalls/families.py): the tools described compactly in the system turn, calls as `<tool_call>`
text in the assistant turn, results as a `<tool_response>` user turn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

from inference_server.engines.base import ChatMessage, TemplateRefused, ToolSpec
from inference_server.toolcalls.families import (
    FALLBACK,
    ToolFamily,
    fallback_result_text,
    fallback_tools_text,
    family_for_template,
    supports_tools,
)

# What llama-server falls back to when a model ships no template.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> NoReturn:
    raise TemplateRefused(f"the model's chat template refuses these messages: {message}")


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    """transformers' `tojson`: plain json.dumps, not Jinja's HTML-escaping one."""
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    """Renders messages into a prompt ending where the assistant's answer begins."""

    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        self.source = source or CHATML
        self.native_tools = supports_tools(self.source)
        self.family: ToolFamily = family_for_template(self.source)
        self._template = env.from_string(self.source)
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
        from jinja2 import TemplateError

        extra: dict[str, Any] = {}
        if self.native_tools:
            turns = [_native_turn(m, self.family) for m in messages]
            if tools:
                extra["tools"] = [_native_tool(t) for t in tools]
        else:
            turns = _fallback_turns(messages, tools)
        try:
            return self._template.render(
                messages=turns,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                add_generation_prompt=True,
                **extra,
            )
        except TemplateError as exc:
            raise TemplateRefused(f"the model's chat template failed on these messages: {exc}") from None


def _native_tool(tool: ToolSpec) -> dict[str, Any]:
    function = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return {"type": "function", "function": function}


def _native_turn(message: ChatMessage, family: ToolFamily) -> dict[str, Any]:
    """A message as transformers hands it to a template that takes tools (OpenAI's shape); ids in the
    family's own form (Mistral's templates refuse anything but 9 alphanumerics)."""
    turn: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        turn["tool_calls"] = [
            {
                "id": family.call_id_text(c.id),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in message.tool_calls
        ]
    if message.role == "tool":
        turn["tool_call_id"] = family.call_id_text(message.tool_call_id)
        turn["name"] = message.name
    return turn


def _fallback_turns(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Tools, calls and results as plain text turns, for a template that knows no tools."""
    turns: list[dict[str, Any]] = []
    if tools:
        described = fallback_tools_text(tools)
        if messages and messages[0].role == "system":
            first, messages = messages[0], messages[1:]
            described = f"{first.content}\n\n{described}" if first.content else described
        turns.append({"role": "system", "content": described})
    previous = ""
    for m in messages:
        if m.role == "tool":
            result = fallback_result_text(m.content)
            if previous == "tool":  # consecutive results share one user turn
                turns[-1]["content"] += "\n" + result
            else:
                turns.append({"role": "user", "content": result})
        elif m.tool_calls:
            calls = FALLBACK.render_calls(m.tool_calls)
            turns.append({"role": m.role, "content": f"{m.content}\n{calls}" if m.content else calls})
        else:
            turns.append({"role": m.role, "content": m.content})
        previous = m.role
    return turns
