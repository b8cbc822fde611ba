"""Whether a model fits this host: the server's memory estimate against its budget and free memory.

The estimate is the server's own (inference_server.engines.memory), for the files the server would
load and the context and slots it would serve them with, so `models.fit` and the model pool agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inference_server.engines import memory
from inference_server.engines.base import EngineError
from tasks.core import catalog
from tasks.core.config import Settings
from tasks.core.errors import HomelabError

Verdict = Literal["fits", "fits after evicting", "does not fit"]
MiB = 1 << 20  # memory_budget_mb counts mebibytes, as test.memory's RSS figures and `free -m` do


def mib(size: int) -> str:
    """Memory in the unit the budget is set in."""
    return f"{size / MiB:,.0f} MiB"


@dataclass(frozen=True)
class Fit:
    model: str
    context: int
    slots: int
    estimate: memory.MemoryEstimate
    budget: int
    free: int  # available memory now (psutil): what a load could take without evicting anything
    verdict: Verdict
    advice: str  # one line: the numbers, and for a model that does not fit, the fix


def fit(settings: Settings, name: str, context: int = 0, slots: int = 0) -> Fit:
    """The estimate for `name` with this context and these slots (0: invoke.yaml's, the context capped
    by the model's own, as server.start does) against server.memory_budget_mb and free memory."""
    import psutil

    from tasks.core.server import model_files

    entry = catalog.get_entry(catalog.load_catalog(settings.models.catalog), name)
    path, model_format = model_files(entry, settings.server.engine, settings.models)
    context = min(context or settings.server.context_size, entry.context_length)
    slots = slots or settings.server.slots
    try:
        needed = memory.estimate(path, model_format, context, slots)
    except EngineError as exc:
        raise HomelabError(f"model '{name}': {exc}", f"check the file: inv models.verify {name}") from None
    budget = settings.server.memory_budget_mb * MiB or memory.default_budget_bytes()
    free = int(psutil.virtual_memory().available)
    verdict, advice = _judge(entry.name, needed, context, budget, free)
    return Fit(entry.name, context, slots, needed, budget, free, verdict, advice)


def _judge(
    name: str, needed: memory.MemoryEstimate, context: int, budget: int, free: int
) -> tuple[Verdict, str]:
    total = needed.total
    parts = (
        f"{mib(total)} (weights {mib(needed.weights)} + KV cache"
        f" {mib(needed.kv_cache)} + compute {mib(needed.compute)})"
    )
    if total <= budget and total <= free:
        return "fits", f"{name} needs {parts}: {mib(free)} free, budget {mib(budget)}"
    if total <= budget:
        return "fits after evicting", (
            f"{name} needs {parts}, {mib(free)} is free now: the server unloads idle models"
            f" (least recently used first) to make room, within its budget of {mib(budget)}"
        )
    over = f"{name} needs {parts}, over the budget of {mib(budget)}"
    return "does not fit", f"{over} — {_fix(needed, context, budget)}"


def _fix(needed: memory.MemoryEstimate, context: int, budget: int) -> str:
    """What would make it fit, with numbers: a smaller context, a smaller quant, a bigger budget. Fewer
    slots barely help: the slots share one KV cache sized by the context (one logits row each)."""
    per_token = needed.kv_cache / context
    room = budget - needed.weights - needed.compute
    fixes = []
    if room >= 256 * per_token:
        fixes.append(f"a smaller context (--context {int(room // per_token) // 256 * 256} fits)")
    fixes.append(f"a smaller quant (the weights alone are {mib(needed.weights)})")
    return ", ".join(fixes) + ", or a bigger server.memory_budget_mb"
