"""Stop strings across chunk boundaries: nothing past a stop leaks, nothing else is held back."""

from __future__ import annotations

from inference_server.generation import StopMatcher


def feed_all(matcher: StopMatcher, chunks: list[str]) -> tuple[str, str | None]:
    out = []
    for chunk in chunks:
        text, stop = matcher.feed(chunk)
        out.append(text)
        if stop is not None:
            return "".join(out), stop
    return "".join(out) + matcher.flush(), None


def test_stop_split_across_chunks_is_found_and_not_emitted() -> None:
    assert feed_all(StopMatcher(["\nUser:"]), ["Hello", " there\nUs", "er: more"]) == (
        "Hello there",
        "\nUser:",
    )


def test_possible_stop_start_is_held_then_released_when_it_is_not_one() -> None:
    matcher = StopMatcher(["END"])
    assert matcher.feed("the EN") == ("the ", None)
    assert matcher.feed("D") == ("", "END")
    other = StopMatcher(["END"])
    assert other.feed("the EN") == ("the ", None)
    assert other.feed("ding") == ("ENding", None)


def test_earliest_stop_wins_when_several_match() -> None:
    assert feed_all(StopMatcher(["world", "o"]), ["hello world"]) == ("hell", "o")


def test_text_without_stops_passes_through_unchanged() -> None:
    assert feed_all(StopMatcher([]), ["a", "b", "c"]) == ("abc", None)
    assert feed_all(StopMatcher(["zz"]), ["abz"]) == ("abz", None)


def test_empty_stop_strings_are_ignored() -> None:
    assert feed_all(StopMatcher(["", "x"]), ["abc"]) == ("abc", None)
