"""Embedding vectors as every API hands them out: unit length (OpenAI's and Ollama's), optionally
shortened to their first dimensions and made unit length again (Matryoshka truncation, as OpenAI's
`dimensions` does)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def unit(vector: Sequence[float]) -> list[float]:
    """The vector scaled to length 1 (a zero vector stays zero: it has no direction)."""
    length = math.sqrt(math.fsum(x * x for x in vector))
    return [x / length for x in vector] if length > 0 else list(vector)


def shortened(vector: Sequence[float], dimensions: int) -> list[float]:
    """The first `dimensions` components, unit length again."""
    return unit(vector[:dimensions])
