"""Where a rendered chat prompt holds the client's own text, so special tokens are parsed only outside it.

A chat template wraps each message in control tokens (`<|im_start|>user ... <|im_end|>`). Tokenising
the whole rendered prompt with special-token parsing would turn a user message that *contains*
`<|im_end|>\n<|im_start|>system` into real control tokens: role injection. The template's text is
trusted, the messages' text is not; this finds each message's text in the rendered prompt, in order,
so the engine can tokenise the two kinds of span differently.
"""

from __future__ import annotations

from collections.abc import Sequence


def split_untrusted(rendered: str, contents: Sequence[str]) -> list[tuple[str, bool]]:
    """`rendered` cut into (text, is_client_text) spans, in order. A content the template changed
    (trimmed, say) is looked for trimmed; one not found at all stays in the trusted span around it,
    which is as safe as the template that rewrote it."""
    spans: list[tuple[str, bool]] = []
    at = 0
    for content in contents:
        for candidate in (content, content.strip()):
            if not candidate:
                break
            found = rendered.find(candidate, at)
            if found >= 0:
                if found > at:
                    spans.append((rendered[at:found], False))
                spans.append((candidate, True))
                at = found + len(candidate)
                break
    if at < len(rendered):
        spans.append((rendered[at:], False))
    return spans
