"""Keep-alive durations as Ollama spells them: seconds as a number, or "30s", "5m", "1h30m"; any
negative value means forever (-1), 0 means at once."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def seconds(value: object) -> float:
    """Raises ValueError naming the accepted forms for anything else."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as 30s, 5m, 1h30m")
    if isinstance(value, int | float):
        return -1.0 if value < 0 else float(value)
    text = str(value).strip()
    try:
        return seconds(float(text))
    except ValueError:
        pass
    negative = text.startswith("-")
    body = text.removeprefix("-")
    parts = _PART.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise ValueError(f"'{value}' is not a duration: give seconds or a string such as 30s, 5m, 1h30m")
    total = sum(float(number) * _UNIT[unit] for number, unit in parts)
    return -1.0 if negative and total else total


KeepAlive = Annotated[float, BeforeValidator(seconds)]
