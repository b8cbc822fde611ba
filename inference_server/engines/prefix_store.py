"""Saved KV states of prompt prefixes, least recently used first out, bounded by bytes.

A slot keeps only its last request's prefix. When a new request is about to overwrite a long one
(another conversation, another agent), the engine saves that sequence's state here, and restores it
into a slot when a later prompt shares more of it than any slot does: the "prompt cache" of
llama-server's `--cache-ram`, keyed by tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share: a bisection over slice comparisons, which run in
    C, as prompts of 20k tokens are compared against every slot on the decoding thread."""
    a, b = list(a), list(b)
    lo, hi = 0, min(len(a), len(b))
    if a[:hi] == b[:hi]:
        return hi
    while hi - lo > 1:  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class SavedPrefix:
    tokens: tuple[int, ...]
    state: Any  # an opaque buffer of `size` bytes (llama.cpp's sequence state)
    size: int


class PrefixStore:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._entries: OrderedDict[tuple[int, ...], SavedPrefix] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, tokens: Sequence[int]) -> tuple[SavedPrefix | None, int]:
        """The saved prefix sharing the most leading tokens with `tokens`, and how many."""
        found, shared = None, 0
        for entry in self._entries.values():
            n = common_prefix(entry.tokens, tokens)
            if n > shared:
                found, shared = entry, n
        return found, shared

    def fits(self, size: int) -> bool:
        return 0 < size <= self.budget_bytes

    def put(self, entry: SavedPrefix) -> None:
        """Keep `entry`, dropping saved prefixes it extends and then the least recently used."""
        if not self.fits(entry.size):
            return
        for tokens in [t for t in self._entries if entry.tokens[: len(t)] == t]:
            self.pop(self._entries[tokens])
        while self.used_bytes + entry.size > self.budget_bytes:
            self.pop(next(iter(self._entries.values())))
        self._entries[entry.tokens] = entry
        self.used_bytes += entry.size

    def pop(self, entry: SavedPrefix) -> None:
        """Forget `entry` (it was restored into a slot, which now holds it)."""
        if self._entries.pop(entry.tokens, None) is not None:
            self.used_bytes -= entry.size
