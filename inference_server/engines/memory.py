"""Placeholder until the memory branch lands (file size + a rough KV figure); replaced there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute


def estimate(path: Path, model_format: str, context_size: int, slots: int) -> MemoryEstimate:
    size = (
        path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.glob("*.safetensors"))
    )
    return MemoryEstimate(size, context_size * 20000, 50_000_000)


def default_budget_bytes() -> int:
    return int(psutil.virtual_memory().total * 0.75)


def resident_bytes() -> int:
    return psutil.Process().memory_info().rss
