"""The one table of tool-call formats, chosen from a chat template's source.

Each model family was trained to write its calls in one syntax; the grammar, the parser and the
fallback rendering all read it from a `ToolFamily` here, so a new family is one more row. The rows
follow what the models' own templates render and what llama.cpp's common/chat.cpp parses:

- hermes: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per call (Qwen 2.5,
  Granite 4, Hermes 2/3, and the FALLBACK for templates without tool support, SmolLM2's among them).
- phi4: `<|tool_call|>[{"name": ..., "arguments": {...}}, ...]<|/tool_call|>` (Phi-4-mini).
- granite: `<|tool_call|>[{"name": ..., "arguments": {...}}, ...]` (Granite 3.x).
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": "abcDEF123"}, ...]` (Mistral v0.3, Nemo).
- llama3: `{"name": ..., "parameters": {...}}` as the whole answer, or after `<|python_tag|>` (Llama 3.1-3.3);
  one call per answer, as Meta's format documents.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inference_server.engines.base import ToolCall, ToolSpec
from inference_server.toolcalls.parser import CallParser


@dataclass(frozen=True)
class ToolFamily:
    """How one model family writes tool calls."""

    name: str
    markers: tuple[str, ...]  # template-source substrings that select this family
    trigger: str  # text that opens a call inside free text; "" = a call only at the start of the answer
    opener: str  # written before each call (per-call families) or before the list of calls (array ones)
    closer: str  # written after each call / after the list
    separator: str  # between two calls of one answer
    array: bool  # the calls of one answer are one JSON array after a single opener
    args_key: str = "arguments"
    call_id: bool = False  # the call object carries an "id" after its arguments (Mistral)
    start_tag: str = ""  # an optional special token a start-only call may begin with (llama3)
    parallel: bool = True  # the format can carry several calls in one answer

    def call_text(self, name: str, arguments: dict[str, Any], call_id: str = "") -> str:
        """One call's JSON object as this family writes it."""
        obj: dict[str, Any] = {"name": name, self.args_key: arguments}
        if self.call_id:
            obj["id"] = self.call_id_text(call_id)
        return json.dumps(obj, ensure_ascii=False)

    def call_id_text(self, call_id: str) -> str:
        """A call id as this family's templates take it: Mistral's insist on 9 alphanumerics."""
        if not self.call_id:
            return call_id
        return re.sub(r"[^a-zA-Z0-9]", "", call_id)[-9:].rjust(9, "0")

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        """An assistant turn's calls in this family's syntax (the fallback history format)."""
        objs = [self.call_text(c.name, c.arguments, c.id) for c in calls]
        if self.array:
            return self.opener + "[" + ", ".join(objs) + "]" + self.closer
        return self.separator.join(self.opener + o + self.closer for o in objs)

    def new_parser(self) -> CallParser:
        return CallParser(self)


HERMES = ToolFamily(
    name="hermes",
    markers=("<tool_call>",),
    trigger="<tool_call>",
    opener="<tool_call>\n",
    closer="\n</tool_call>",
    separator="\n",
    array=False,
)
PHI4 = ToolFamily(
    name="phi4",
    markers=("<|/tool_call|>",),
    trigger="<|tool_call|>",
    opener="<|tool_call|>",
    closer="<|/tool_call|>",
    separator=", ",
    array=True,
)
GRANITE = ToolFamily(
    name="granite",
    markers=("<|tool_call|>",),
    trigger="<|tool_call|>",
    opener="<|tool_call|>",
    closer="",
    separator=", ",
    array=True,
)
MISTRAL = ToolFamily(
    name="mistral",
    markers=("[TOOL_CALLS]",),
    trigger="[TOOL_CALLS]",
    opener="[TOOL_CALLS]",
    closer="",
    separator=", ",
    array=True,
    call_id=True,
)
LLAMA3 = ToolFamily(
    name="llama3",
    markers=("<|start_header_id|>ipython<|end_header_id|>", "<|python_tag|>"),
    trigger="",
    opener="",
    closer="",
    separator="",
    array=False,
    args_key="parameters",
    start_tag="<|python_tag|>",
    parallel=False,
)

# Checked in order: the first family whose marker the template mentions wins (Phi-4's closer before
# Granite's shared opener); a template that mentions none gets the fallback.
FAMILIES: tuple[ToolFamily, ...] = (HERMES, PHI4, GRANITE, MISTRAL, LLAMA3)
FALLBACK = HERMES


def family_for_template(template_source: str | None) -> ToolFamily:
    """The family whose syntax the chat template renders calls in; Hermes for templates without tools."""
    if template_source and supports_tools(template_source):
        for family in FAMILIES:
            if any(marker in template_source for marker in family.markers):
                return family
    return FALLBACK


def supports_tools(template_source: str | None) -> bool:
    """True when the template renders `tools` itself (as transformers decides: it mentions them)."""
    return bool(template_source) and "tools" in str(template_source)


# -- the fallback: tools described in the system turn, for templates that take none ----------------

FALLBACK_INSTRUCTIONS = (
    "You can call these tools. Their signatures are JSON lines inside <tools></tools>:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a tool, answer with a JSON object with its name and arguments inside <tool_call></tool_call> "
    'tags:\n<tool_call>\n{{"name": <tool-name>, "arguments": <arguments-json-object>}}\n</tool_call>\n'
    "A tool's result comes back inside <tool_response></tool_response> tags."
)


def fallback_tools_text(tools: Sequence[ToolSpec]) -> str:
    """The tools in few tokens: name, the description's first sentence, parameters without prose or
    bounds. Claude Code's 12 tools are ~32 KB of JSON, mostly prose; this keeps ~12% of it."""
    lines = [
        json.dumps(
            {
                "name": tool.name,
                "description": first_sentence(tool.description),
                "parameters": compact_schema(tool.parameters),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        for tool in tools
    ]
    return FALLBACK_INSTRUCTIONS.format(tools="\n".join(lines))


def fallback_result_text(content: str) -> str:
    return f"<tool_response>\n{content}\n</tool_response>"


_SENTENCE_END = re.compile(r"(?<=[.!?])\s|\n")
# Prose, and the bounds the grammar enforces anyway: the model needs the shape, not the limits.
_DROPPED_KEYWORDS = frozenset(
    {
        "description",
        "$schema",
        "title",
        "examples",
        "$comment",
        "default",
        "pattern",
        "format",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minItems",
        "maxItems",
    }
)
_MAX_DESCRIPTION = 200


def first_sentence(text: str) -> str:
    text = text.strip()
    match = _SENTENCE_END.search(text)
    sentence = text[: match.start()].strip() if match else text
    return sentence if len(sentence) <= _MAX_DESCRIPTION else sentence[: _MAX_DESCRIPTION - 1] + "…"


def compact_schema(schema: Any) -> Any:
    """A schema without its prose keywords (description, title, examples, $schema) at any depth;
    property names are kept even when a property is called "description"."""
    if isinstance(schema, list):
        return [compact_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYWORDS or (key == "additionalProperties" and value is False):
            continue
        if key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: compact_schema(sub) for name, sub in value.items()}
        else:
            out[key] = compact_schema(value)
    return out
