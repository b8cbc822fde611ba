"""The byte-bounded store of saved prompt prefixes: longest match, LRU eviction, superseded prefixes."""

from __future__ import annotations

from inference_server.engines.prefix_store import PrefixStore, SavedPrefix, common_prefix


def saved(tokens: list[int], size: int) -> SavedPrefix:
    return SavedPrefix(tuple(tokens), state=None, size=size)


def test_common_prefix_counts_shared_leading_tokens() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0


def test_best_is_the_entry_sharing_the_most_tokens() -> None:
    store = PrefixStore(budget_bytes=100)
    store.put(saved([1, 2, 3], 10))
    store.put(saved([1, 5, 6, 7], 10))
    entry, shared = store.best([1, 2, 3, 9])
    assert entry is not None and entry.tokens == (1, 2, 3) and shared == 3
    assert store.best([8]) == (None, 0)


def test_least_recently_saved_goes_first_when_the_budget_is_exceeded() -> None:
    store = PrefixStore(budget_bytes=25)
    store.put(saved([1], 10))
    store.put(saved([2], 10))
    store.put(saved([3], 10))
    assert store.best([1])[0] is None
    assert store.used_bytes == 20 and len(store) == 2


def test_a_longer_prefix_replaces_the_prefixes_it_extends() -> None:
    store = PrefixStore(budget_bytes=100)
    store.put(saved([1, 2], 10))
    store.put(saved([1, 2, 3], 12))
    assert len(store) == 1 and store.used_bytes == 12


def test_an_entry_larger_than_the_budget_is_not_kept() -> None:
    store = PrefixStore(budget_bytes=5)
    store.put(saved([1], 10))
    assert len(store) == 0 and store.used_bytes == 0
