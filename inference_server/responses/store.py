"""Recent responses kept in memory, so `previous_response_id` continues a conversation.

Each entry holds its whole conversation (every earlier turn, its input and its output), not a link
to the previous entry: evicting an old response never breaks a newer one that continued it. The
store is bounded by count and by bytes, least recently used out first: MAX_RESPONSES keeps a burst of
small requests from growing it for ever, MAX_BYTES bounds long conversations (a 100-turn agent
session on a 32k-token context is a few MB). Nothing survives a restart, and a conversation is only
as private as the server's API key: whoever can call the server can continue any stored response.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from inference_server.engines.base import ChatMessage
from inference_server.responses import protocol as p

log = logging.getLogger("inference_server")

MAX_RESPONSES = 1000
MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Stored:
    response: p.Response
    history: tuple[ChatMessage, ...]  # without instructions: OpenAI does not carry them over
    size: int


def stored(response: p.Response, history: Sequence[ChatMessage]) -> Stored:
    """An entry and its size: the response's JSON and its conversation's text."""
    text = sum(
        len(m.content) + sum(len(c.name) + len(json.dumps(c.arguments)) for c in m.tool_calls)
        for m in history
    )
    return Stored(response, tuple(history), len(response.model_dump_json()) + text)


class ResponseStore:
    def __init__(self, max_responses: int = MAX_RESPONSES, max_bytes: int = MAX_BYTES) -> None:
        self.max_responses = max_responses
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Stored] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, entry: Stored) -> None:
        """Keep `entry`, evicting the least recently used until both bounds hold; one larger than the
        whole store is not kept (a follow-up to it is a 404)."""
        if entry.size > self.max_bytes:
            log.info(
                "response %s (%d bytes) exceeds the store's %d: not stored",
                entry.response.id,
                entry.size,
                self.max_bytes,
            )
            return
        self.delete(entry.response.id)
        self._entries[entry.response.id] = entry
        self.bytes += entry.size
        while len(self._entries) > self.max_responses or self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size

    def get(self, response_id: str) -> Stored | None:
        """The entry, now the most recently used."""
        entry = self._entries.get(response_id)
        if entry is not None:
            self._entries.move_to_end(response_id)
        return entry

    def delete(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self.bytes -= entry.size
        return entry is not None
