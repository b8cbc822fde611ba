"""Load generation shared by the benchmarks: N concurrent streams, aggregate tok/s and time to first token.

`drive_streams` starts N streams together, whatever they are: chat completions from any
OpenAI-compatible server (`stream_chat`: this project's, llama-server, llama-cpp-python's; a fresh
connection per request, as separate clients would) or generations of an engine in-process. Every
target gives the same `Round`, so engine and server figures are measured the same way.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

# Distinct questions with long answers, so each stream decodes its own sequence.
QUESTIONS = [
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how a steam engine works.",
    "Describe the history of the bicycle.",
    "Write a long essay about the ocean.",
    "Explain how computers store numbers.",
    "Describe a day in the life of a farmer.",
    "Write a long story about a dragon and a knight.",
    "Explain how plants grow from seeds.",
]


@dataclass(frozen=True)
class Stream:
    """One request's measurements: seconds to the first token and to the end, and tokens generated."""

    ttft_s: float
    total_s: float
    tokens: int
    cached_tokens: int = 0
    prompt_tokens: int = 0


@dataclass(frozen=True)
class Round:
    """N streams started together: what the benchmark tables compare."""

    concurrency: int
    wall_s: float
    tokens: int
    aggregate_tok_s: float
    per_stream_tok_s: float
    ttft_p50_s: float
    ttft_p95_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q) - 1]


def summarise(streams: list[Stream], wall_s: float) -> Round:
    tokens = sum(s.tokens for s in streams)
    ttfts = [s.ttft_s for s in streams]
    return Round(
        concurrency=len(streams),
        wall_s=wall_s,
        tokens=tokens,
        aggregate_tok_s=tokens / wall_s,
        per_stream_tok_s=statistics.mean(s.tokens / s.total_s for s in streams),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p95_s=percentile(ttfts, 95),
    )


async def drive_streams(start: Callable[[int], Awaitable[Stream]], concurrency: int) -> Round:
    """Run `concurrency` streams at once; `start(i)` runs the i-th one and returns its measurement."""
    started = time.perf_counter()
    streams = await asyncio.gather(*(start(i) for i in range(concurrency)))
    return summarise(list(streams), time.perf_counter() - started)


def chat_request(
    model: str, messages: list[dict[str, str]], max_tokens: int, *, stream: bool = True
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": True},
    }


async def sse_data(response: httpx.Response) -> AsyncIterator[bytes]:
    """The `data:` payloads of a server-sent event stream, split from the raw bytes as they arrive:
    httpx's `aiter_lines` decodes and re-splits text through several layers per chunk, which costs
    the client more CPU per token than the server spends sending it."""
    buffer = b""
    async for received in response.aiter_bytes():
        *lines, buffer = (buffer + received).split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()


@functools.cache
def client_tls() -> ssl.SSLContext:
    """One TLS context for every benchmark client: httpx otherwise loads the CA bundle for each new
    client (about 30 ms of client CPU, even for http:// URLs), which would count as server latency.
    Each request still opens its own connection."""
    return ssl.create_default_context()


async def stream_chat(
    base_url: str,
    body: dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 600,
) -> Stream:
    """One streamed chat completion on a fresh connection. Tokens come from the final usage when the
    server reports it, else one per content delta (what llama-cpp-python sends); reused prompt tokens
    from OpenAI's `prompt_tokens_details` or llama-server's `timings.cache_n`."""
    import httpx

    started = time.perf_counter()
    first = 0.0
    deltas = 0
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    async with (
        httpx.AsyncClient(
            base_url=base_url, timeout=timeout_s, headers=headers, verify=client_tls()
        ) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        response.raise_for_status()
        async for data in sse_data(response):
            if data == b"[DONE]":
                continue
            event = json.loads(data)
            usage = event.get("usage") or usage
            timings = event.get("timings") or timings
            for choice in event.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    deltas += 1
                    if not first:
                        first = time.perf_counter() - started
    details = usage.get("prompt_tokens_details") or {}
    return Stream(
        ttft_s=first,
        total_s=time.perf_counter() - started,
        tokens=int(usage.get("completion_tokens") or deltas),
        cached_tokens=int(details.get("cached_tokens") or timings.get("cache_n") or 0),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
    )
