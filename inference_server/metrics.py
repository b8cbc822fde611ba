"""Prometheus metrics, one registry per app (tests build several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "homelab_requests", "HTTP requests served", ["path", "status"], registry=self.registry
        )
        self.errors = Counter(
            "homelab_errors", "Requests answered with an error", ["kind"], registry=self.registry
        )
        self.prompt_tokens = Counter(
            "homelab_prompt_tokens", "Prompt tokens processed", registry=self.registry
        )
        self.cached_tokens = Counter(
            "homelab_cached_prompt_tokens",
            "Prompt tokens reused from the prefix cache",
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "homelab_completion_tokens", "Tokens generated", registry=self.registry
        )
        self.ttft = Histogram(
            "homelab_time_to_first_token_seconds",
            "From request arrival to the first generated text (queue wait included)",
            buckets=(0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.queue_depth = Gauge("homelab_queue_depth", "Requests waiting for a slot", registry=self.registry)
        self.active = Gauge("homelab_active_requests", "Requests generating now", registry=self.registry)
