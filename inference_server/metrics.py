"""Prometheus metrics, one registry per app (tests build several apps in one process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from inference_server.pool import Pool


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
        self.model_requests = Counter(
            "homelab_model_requests", "Requests that held a model", ["model"], registry=self.registry
        )
        self.model_loads = Counter(
            "homelab_model_loads",
            "Model loads, by outcome (ok, failed)",
            ["model", "outcome"],
            registry=self.registry,
        )
        self.model_unloads = Counter(
            "homelab_model_unloads",
            "Model unloads, by reason (evicted, idle, keep_alive_0, admin)",
            ["model", "reason"],
            registry=self.registry,
        )

    def track_models(self, pool: Pool) -> None:
        """Per-model gauges and the queue and active totals, read from the pool when scraped."""
        self.registry.register(_PoolCollector(pool))


class _PoolCollector(Collector):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        models = list(self.pool.models.values())
        admissions = [m.generation.admission for m in models if m.generation is not None]
        waiting = self.pool.waiting + sum(a.waiting for a in admissions)
        yield GaugeMetricFamily(
            "homelab_queue_depth", "Requests waiting for a slot or a model", value=waiting
        )
        active = sum(a.active for a in admissions)
        yield GaugeMetricFamily("homelab_active_requests", "Requests generating now", value=active)
        per_model = {
            "homelab_model_loaded": ("1 while the model is loaded", lambda m: m.state == "loaded"),
            "homelab_model_resident_bytes": (
                "Measured growth of the RSS over its load",
                lambda m: m.resident_bytes,
            ),
            "homelab_model_footprint_bytes": (
                "What it counts against the memory budget",
                lambda m: m.need.bytes,
            ),
            "homelab_model_active_requests": ("Requests holding the model", lambda m: m.held),
        }
        for name, (doc, value) in per_model.items():
            family = GaugeMetricFamily(name, doc, labels=["model"])
            for model in models:
                family.add_metric([model.spec.name], float(value(model)))
            yield family
        yield GaugeMetricFamily(
            "homelab_memory_budget_bytes",
            "The loaded models' shared budget",
            value=self.pool.settings.memory_budget_bytes,
        )
