"""Request fields both APIs bound or refuse in their protocol, so a request is a 400, never unbounded work.

Stop strings are matched on the event loop after every token: 32 of at most 256 characters each is
more than any client sends (OpenAI allows 4) and keeps that matching small. Seeds are what both
engines take (MLX a 64-bit key, llama.cpp the low 32 bits). `Unsupported` is an option the server
cannot honour: its neutral values (false, 0, empty, null) pass, anything else is a 400 rather than
a silently different answer.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

MAX_STOPS = 32
MAX_STOP_CHARS = 256

StopString = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS)]
StopList = Annotated[
    list[StopString],
    Field(max_length=MAX_STOPS),
    BeforeValidator(lambda value: [value] if isinstance(value, str) else value),  # OpenAI allows one string
]
Seed = Annotated[int, Field(ge=0, lt=2**63)]


def _unset(value: Any) -> Any:
    if value:
        raise PydanticCustomError("unsupported", "not supported by this server; leave it unset")
    return value


Unsupported = Annotated[Any, AfterValidator(_unset)]
