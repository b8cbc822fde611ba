"""Which parts of a rendered chat prompt are the client's own special-token text, so that only the
template's special tokens are parsed as such.

A chat template wraps each message in control tokens (`<|im_start|>user ... <|im_end|>`). Tokenising
the rendered prompt with special-token parsing would also turn a message, a tool description or a
call's arguments that *contain* `<|im_end|>\\n<|im_start|>system` into real control tokens: role
injection. So when any client string holds a special token's text, the prompt is rendered a second
time with those texts replaced by filler of the same length; where the two renders differ is the
client's text, tokenised as plain text. Positions come from the template itself, not from searching
for the content, so a template that trims, reorders or repeats a message cannot shift them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from inference_server.engines.base import ChatMessage, ToolCall, ToolSpec

log = logging.getLogger(__name__)

# Printable ASCII, so JSON escaping (templates `tojson` tool schemas) keeps the length; the first one
# no special token contains is used, so every position of a neutralised text differs.
FILLERS = "~^`#"


def neutralised(
    messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], specials: Sequence[str]
) -> tuple[list[ChatMessage], list[ToolSpec]] | None:
    """The messages and tools with every special token text in client strings replaced by filler of
    the same length, or None when there is none (the common case: one render, nothing to split)."""
    longest_first = sorted({s for s in specials if s}, key=len, reverse=True)
    filler = next((c for c in FILLERS if not any(c in s for s in longest_first)), FILLERS[0])
    found = False

    def clean(value: Any) -> Any:
        nonlocal found
        if isinstance(value, str):
            text = value
            for special in longest_first:
                if special in text:
                    found = True
                    text = text.replace(special, filler * len(special))
            return text
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(clean(v) for v in value)
        if isinstance(value, ChatMessage | ToolCall | ToolSpec):
            fields = {f.name: clean(getattr(value, f.name)) for f in dataclasses.fields(value)}
            return dataclasses.replace(value, **fields)
        return value

    cleaned = [clean(m) for m in messages], [clean(t) for t in tools]
    return cleaned if found else None


def client_spans(rendered: str, masked: str) -> list[tuple[str, bool]]:
    """`rendered` cut into (text, is_client_text) spans: client text is where the masked render
    differs. Renders of different lengths (a template that reacted to the filler) give the masked
    render whole, in which the client's special texts are filler: nothing left to inject."""
    if len(rendered) != len(masked):
        log.warning("the chat template rendered neutralised text differently; its specials are dropped")
        return [(masked, False)]
    spans: list[tuple[str, bool]] = []
    start, client = 0, False
    for i, (a, b) in enumerate(zip(rendered, masked, strict=True)):
        if (a != b) != client:
            if i > start:
                spans.append((rendered[start:i], client))
            start, client = i, a != b
    if start < len(rendered):
        spans.append((rendered[start:], client))
    return spans


def chat_spans(
    render: Any, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], specials: Sequence[str]
) -> list[tuple[str, bool]]:
    """The prompt `render(messages, tools)` gives, as spans for tokenising (see the module doc)."""
    rendered: str = render(messages, tools)
    cleaned = neutralised(messages, tools, specials)
    if cleaned is None:
        return [(rendered, False)]
    return client_spans(rendered, render(*cleaned))
