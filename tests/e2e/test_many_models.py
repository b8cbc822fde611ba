"""Two real models behind one server: SmolLM2 135M and Gemma 3 270M, both bundled.

Loads on demand, eviction under a memory budget, keep-alive, pins, routing of Claude's tiers, and the
tasks that show and drive it. Budgets are worked out from the server's own footprints (tasks.core
builds them the same way), so "room for one" means exactly that on any machine.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from inference_server import pool
from tests.e2e.test_server_lifecycle import inv
from tests.fixtures.server import TIMEOUT, RunningServer, running_server, settings_for_test

SMALL, OTHER = "smollm2", "gemma3"
BASE: dict[str, Any] = {
    "models": f"{SMALL},{OTHER}",
    "context_size": 2048,
    "prefix_cache_bytes": 32 * 2**20,
    "alias": [f"claude-haiku-*={OTHER}", "claude-*"],
}
QUESTION = [{"role": "user", "content": "Name a colour."}]
DEADLINE_S = 60  # for a state the server reaches by itself (an unload after its keep-alive)


def needs(**flags: Any) -> dict[str, int]:
    """Each model's footprint against the budget, as the server counts it."""
    settings = settings_for_test(**BASE, **flags)
    return {spec.name: pool.footprint(spec, settings).bytes for spec in settings.models}


def mb(size: int) -> int:
    return -(-size // 2**20)  # rounded up


def serve(tmp_path: Path, budget: Callable[[dict[str, int]], int], **flags: Any) -> Iterator[RunningServer]:
    settings = settings_for_test(**BASE, **flags, memory_budget_mb=budget(needs(**flags)))
    with running_server(tmp_path / "state", settings) as server:
        yield server


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Room for both models at once."""
    yield from serve(tmp_path_factory.mktemp("roomy"), lambda need: mb(sum(need.values())) + 16, slots=2)


@pytest.fixture
def tight(tmp_path: Path) -> Iterator[RunningServer]:
    """Room for either model, not both; one slot and no queue, so a second waiter is refused."""
    yield from serve(
        tmp_path,
        lambda need: mb(max(need.values())) + 1,
        slots=1,
        queue_size=0,
        swap_grace_s=0,
        keep_alive="-1",
    )


def headers(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"}


def models(server: RunningServer) -> dict[str, dict[str, Any]]:
    answer = httpx.get(f"{server.url}/admin/models", headers=headers(server), timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    return {row["name"]: row for row in answer.json()["models"]}


def state(server: RunningServer, name: str) -> str:
    return str(models(server)[name]["state"])


def admin(server: RunningServer, name: str, action: str, **params: str) -> httpx.Response:
    url = f"{server.url}/admin/models/{name}/{action}"
    return httpx.post(url, params=params, headers=headers(server), timeout=TIMEOUT)


def counter(server: RunningServer, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", headers=headers(server), timeout=TIMEOUT).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    series = f"{name}{{{wanted}}}" if labels else name
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, timeout=TIMEOUT, max_retries=0)


def ask(server: RunningServer, model: str, **extra: Any) -> str:
    reply = client(server).chat.completions.create(
        model=model, messages=QUESTION, max_tokens=4, temperature=0, extra_body=extra or None
    )
    return reply.choices[0].message.content or ""


def wait_for(server: RunningServer, name: str, wanted: str) -> None:
    """A state the server reaches on its own (after a request ends or a keep-alive runs out)."""
    deadline = time.monotonic() + DEADLINE_S
    while state(server, name) != wanted:
        assert time.monotonic() < deadline, f"{name} never became {wanted}: {models(server)[name]}"
        time.sleep(0.2)


# A string the grammar will not let end before the context does: the stream runs until it is closed
# or the context (2,048 tokens) is full, whichever comes first.
ENDLESS = {
    "type": "json_schema",
    "json_schema": {
        "name": "endless",
        "schema": {
            "type": "object",
            "properties": {"text": {"type": "string", "minLength": 100000}},
            "required": ["text"],
        },
    },
}


class OpenStream:
    """A streamed answer held open after its first chunk: its model is in use until `close()`."""

    def __init__(self, server: RunningServer, model: str) -> None:
        self.stream = client(server).chat.completions.create(
            model=model,
            messages=QUESTION,
            temperature=1,
            stream=True,
            response_format=ENDLESS,  # type: ignore[arg-type]
        )
        self.chunks = iter(self.stream)
        self.first = next(self.chunks)

    def still_running(self) -> bool:
        """The stream has not ended by itself (so what was checked meanwhile saw it in flight)."""
        return next(self.chunks).choices[0].finish_reason is None

    def close(self) -> None:
        self.stream.close()


def in_background(name: str, work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """`work` on a thread; its result (or error) and when it ended land in the dict."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = work()
        except Exception as exc:
            result["error"] = exc
        result["ended"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    return thread, result


def wait_for_waiters(server: RunningServer, count: int, *alive: threading.Thread) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while counter(server, "homelab_queue_depth") < count:
        assert time.monotonic() < deadline, f"{count} waiters never arrived"
        ended = [t.name for t in alive if not t.is_alive()]
        assert not ended, f"{ended} ended instead of waiting"
        time.sleep(0.05)


def test_a_request_for_the_second_model_loads_it_and_answers(roomy: RunningServer) -> None:
    assert admin(roomy, OTHER, "unload").status_code == 200
    listed = {m.id: m for m in client(roomy).models.list().data}
    assert {SMALL, OTHER} <= set(listed)
    assert listed[OTHER].model_extra["state"] == "unloaded"
    loads = counter(roomy, "homelab_model_loads_total", model=OTHER, outcome="ok")
    assert ask(roomy, OTHER)
    row = models(roomy)[OTHER]
    assert (row["state"], row["engine"]) == ("loaded", "llama_cpp")
    assert row["resident_bytes"] > 0 and row["estimate"]["total_bytes"] > 0
    assert counter(roomy, "homelab_model_loads_total", model=OTHER, outcome="ok") == loads + 1
    assert state(roomy, SMALL) == "loaded", "room for both: nothing was evicted"


def test_streams_on_two_models_run_at_once(roomy: RunningServer) -> None:
    first, second = OpenStream(roomy, SMALL), OpenStream(roomy, OTHER)
    try:
        rows = models(roomy)
        assert (rows[SMALL]["active_requests"], rows[OTHER]["active_requests"]) == (1, 1)
        assert first.still_running() and second.still_running()
    finally:
        first.close()
        second.close()


def test_claude_tiers_route_to_their_models_through_the_anthropic_sdk(roomy: RunningServer) -> None:
    claude = anthropic.Anthropic(base_url=roomy.url, api_key=roomy.api_key, timeout=TIMEOUT, max_retries=0)
    before = {name: counter(roomy, "homelab_model_requests_total", model=name) for name in (SMALL, OTHER)}
    for model in ("claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-1"):
        reply = claude.messages.create(model=model, max_tokens=4, messages=QUESTION)  # type: ignore[arg-type]
        assert reply.model == model
    after = {name: counter(roomy, "homelab_model_requests_total", model=name) for name in (SMALL, OTHER)}
    assert (after[OTHER] - before[OTHER], after[SMALL] - before[SMALL]) == (1, 2)


def test_keep_alive_0_unloads_after_the_answer_and_a_short_one_expires(roomy: RunningServer) -> None:
    assert ask(roomy, OTHER, keep_alive=0)
    wait_for(roomy, OTHER, "unloaded")
    assert counter(roomy, "homelab_model_unloads_total", model=OTHER, reason="keep_alive_0") >= 1
    assert ask(roomy, OTHER, keep_alive="1s")
    wait_for(roomy, OTHER, "unloaded")
    assert counter(roomy, "homelab_model_unloads_total", model=OTHER, reason="idle") >= 1
    assert state(roomy, SMALL) == "loaded"


def test_ps_load_and_unload_through_real_inv_processes(roomy: RunningServer) -> None:
    env = {**os.environ, "INVOKE_SERVER_STATE_DIR": str(roomy.files.folder), "COLUMNS": "200"}
    pinned = inv(env, "server.load", OTHER, "--pin")
    assert pinned.returncode == 0, pinned.stderr
    assert f"{OTHER} loaded and pinned" in pinned.stdout
    shown = inv(env, "server.ps")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if OTHER in line)
    assert "llama_cpp" in row and "pinned" in row, shown.stdout
    unloaded = inv(env, "server.unload", OTHER)
    assert unloaded.returncode == 0 and f"{OTHER} unloaded" in unloaded.stdout, unloaded.stderr
    assert state(roomy, OTHER) == "unloaded"
    unknown = inv(env, "server.load", "nope")
    assert unknown.returncode != 0
    assert unknown.stderr.strip().splitlines()[-1].startswith("error: server answered 404: model 'nope'")


def test_room_for_one_evicts_the_idle_model_which_reloads_on_its_next_request(tight: RunningServer) -> None:
    assert state(tight, SMALL) == "loaded"
    assert ask(tight, OTHER)
    rows = models(tight)
    assert (rows[SMALL]["state"], rows[OTHER]["state"]) == ("unloaded", "loaded")
    assert counter(tight, "homelab_model_unloads_total", model=SMALL, reason="evicted") == 1
    assert ask(tight, SMALL)
    assert (state(tight, SMALL), state(tight, OTHER)) == ("loaded", "unloaded")
    assert counter(tight, "homelab_model_loads_total", model=SMALL, outcome="ok") == 2


def test_a_model_with_a_stream_in_flight_is_not_evicted(tight: RunningServer) -> None:
    """The other model's request waits and a second one finds the queue full (503 + Retry-After); a
    request for the busy model after the grace (0 here) waits its turn instead of starving the other."""
    held = OpenStream(tight, SMALL)
    try:
        other, other_result = in_background("the other model's request", lambda: ask(tight, OTHER))
        wait_for_waiters(tight, 1, other)
        assert (state(tight, SMALL), state(tight, OTHER)) == ("loaded", "unloaded")
        with pytest.raises(openai.APIStatusError) as refused:
            ask(tight, OTHER)
        assert refused.value.status_code == 503 and int(refused.value.response.headers["Retry-After"]) > 0
        again, again_result = in_background("a later request for the busy model", lambda: ask(tight, SMALL))
        wait_for_waiters(tight, 2, other, again)  # admitted to the busy model it would have been refused
        assert state(tight, SMALL) == "loaded", "a model in use was evicted"
        assert held.still_running(), "the held stream ended by itself: the test proved nothing"
    finally:
        held.close()
    for thread in (other, again):
        thread.join(TIMEOUT)
    assert "value" in other_result and "value" in again_result, (other_result, again_result)
    assert other_result["ended"] < again_result["ended"], "the later request overtook the waiting model"
    assert counter(tight, "homelab_model_loads_total", model=SMALL, outcome="ok") == 2


def test_a_pinned_model_survives_pressure_and_what_cannot_fit_is_refused_in_one_line(
    tight: RunningServer,
) -> None:
    assert admin(tight, SMALL, "load", pin="true").json()["pinned"] is True
    with pytest.raises(openai.BadRequestError) as refused:
        ask(tight, OTHER)
    message = refused.value.body["message"]  # type: ignore[index]
    assert re.fullmatch(
        rf"model '{OTHER}' needs [\d,]+ MiB \(weights [\d,]+ MiB \+ KV cache [\d,]+ MiB \+ compute [\d,]+ MiB"
        r" \+ prefix cache [\d,]+ MiB \+ embedding context [\d,]+ MiB\) but the memory budget has [\d,]+ MiB"
        r" left beside the pinned models: "
        r"serve it with fewer slots or a smaller context, raise server.memory_budget_mb, "
        r"or use a smaller quant",
        message,
    ), message
    assert state(tight, SMALL) == "loaded"


def test_a_default_model_over_the_budget_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "INVOKE_SERVER_STATE_DIR": str(tmp_path / "state"),
        "INVOKE_SERVER_MEMORY_BUDGET_MB": "64",
    }
    started = inv(env, "server.start")
    assert started.returncode != 0
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1, started.stderr
    assert re.match(
        r"error: model 'smollm2' needs [\d,]+ MiB \(weights .* but the memory budget has 64 MiB", lines[0]
    )
    assert not (tmp_path / "state" / "server.pid").exists()


def test_server_claude_says_which_model_each_tier_reaches(roomy: RunningServer) -> None:
    env = {**os.environ, "INVOKE_SERVER_STATE_DIR": str(roomy.files.folder)}
    printed = inv(env, "server.claude", "--print-only")
    assert printed.returncode == 0, printed.stderr
    assert f"# main tier claude-sonnet-5-5 → {SMALL}, haiku tier claude-haiku-5-5 → {OTHER}" in printed.stderr
    assert "export ANTHROPIC_SMALL_FAST_MODEL=claude-haiku-5-5" in printed.stdout
