"""What the dashboard shows over time: the last requests and a few minutes of load samples.

Both live on the event loop only (records are made in stream callbacks, samples by one task), so
neither needs a lock; both are bounded deques.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry

RECENT_REQUESTS = 50
SAMPLE_EVERY_S = 2.0
SAMPLES = 150  # five minutes


@dataclass(frozen=True)
class RequestRecord:
    at: float  # wall-clock seconds
    model: str
    prompt_tokens: int
    completion_tokens: int
    duration_s: float
    status: str  # the finish reason, "cancelled", or the error kind
    prompt: str  # empty unless server.ui_prompt_text is on


class RequestLog:
    """The last generations, newest first when listed."""

    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=size)

    def add(self, record: RequestRecord) -> None:
        self._records.append(record)

    def listed(self) -> list[dict[str, object]]:
        return [asdict(r) for r in reversed(self._records)]


@dataclass(frozen=True)
class Sample:
    at: float
    tokens_per_s: float
    in_flight: float
    queue_depth: float
    ttft_s: float | None  # the mean over the interval; None when no request started in it


class History:
    """Load samples read from the app's own metrics registry every SAMPLE_EVERY_S."""

    def __init__(self, registry: CollectorRegistry, size: int = SAMPLES) -> None:
        self.registry = registry
        self.samples: deque[Sample] = deque(maxlen=size)
        self._last = self._counters()

    def _value(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0

    def _counters(self) -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            self._value("homelab_completion_tokens_total"),
            self._value("homelab_time_to_first_token_seconds_sum"),
            self._value("homelab_time_to_first_token_seconds_count"),
        )

    def sample(self) -> None:
        now = self._counters()
        (t0, tokens0, ttft0, firsts0), (t1, tokens1, ttft1, firsts1) = self._last, now
        self._last = now
        firsts = firsts1 - firsts0
        self.samples.append(
            Sample(
                at=time.time(),
                tokens_per_s=round((tokens1 - tokens0) / max(t1 - t0, 1e-6), 2),
                in_flight=self._value("homelab_active_requests"),
                queue_depth=self._value("homelab_queue_depth"),
                ttft_s=round((ttft1 - ttft0) / firsts, 3) if firsts else None,
            )
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY_S)
            self.sample()

    def listed(self) -> list[dict[str, object]]:
        return [asdict(s) for s in self.samples]
