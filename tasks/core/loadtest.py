"""Real requests against a running OpenAI + Anthropic compatible server: smoke, stress and memory.

Everything goes over HTTP with httpx, so the same checks run against our server, llama.cpp's
`llama-server`, or any peer that speaks the same APIs.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tasks.core.config import Settings
from tasks.core.errors import HomelabError

PROMPT = "Say hello in one word."


@dataclass(frozen=True)
class Target:
    """A server to talk to: base URL, API key (sent both ways APIs expect it), model, request limits.

    An empty `model` means the first one the server lists (else `fallback_model`).
    """

    url: str
    api_key: str
    timeout_s: float
    max_tokens: int
    model: str = ""
    fallback_model: str = ""

    def client(self) -> Any:
        import httpx

        headers = {"anthropic-version": "2023-06-01"}
        if self.api_key:
            headers |= {"authorization": f"Bearer {self.api_key}", "x-api-key": self.api_key}
        return httpx.Client(base_url=self.url.rstrip("/"), headers=headers, timeout=self.timeout_s)


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    seconds: float


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


def pick_model(client: Any, target: Target) -> str:
    """The model asked for; else the first the server lists; else the fallback (smoke reports why)."""
    if target.model:
        return target.model
    try:
        models = client.get("/v1/models").json().get("data") or []
    except Exception:
        return target.fallback_model
    return str(models[0]["id"]) if models else target.fallback_model


def _chat_body(model: str, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }


def _expect(response: Any) -> Any:
    if response.status_code != 200:
        raise AssertionError(f"HTTP {response.status_code} {response.text[:120].strip()}")
    return response


def _health(client: Any, target: Target, model: str) -> str:
    _expect(client.get("/health"))
    return "200"


def _models(client: Any, target: Target, model: str) -> str:
    ids = [m["id"] for m in _expect(client.get("/v1/models")).json()["data"]]
    if not ids:
        raise AssertionError("no models listed")
    return ", ".join(ids)


def _chat(client: Any, target: Target, model: str) -> str:
    body = _expect(client.post("/v1/chat/completions", json=_chat_body(model, target.max_tokens))).json()
    text = body["choices"][0]["message"]["content"]
    return f"{body['usage']['completion_tokens']} tokens: {text.strip()[:40]!r}"


def _chat_stream(client: Any, target: Target, model: str) -> str:
    chunks, text, done = 0, "", False
    body = _chat_body(model, target.max_tokens, stream=True)
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
        _expect(response)
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                done = True
                break
            delta = json.loads(data)["choices"][0].get("delta", {})
            text += delta.get("content") or ""
            chunks += 1
    if not done:
        raise AssertionError(f"stream ended without [DONE] after {chunks} chunks")
    return f"{chunks} chunks: {text.strip()[:40]!r}"


def _messages(client: Any, target: Target, model: str) -> str:
    body = {
        "model": model,
        "max_tokens": target.max_tokens,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    reply = _expect(client.post("/v1/messages", json=body)).json()
    if reply.get("type") != "message":
        raise AssertionError(f"not an Anthropic message: {str(reply)[:80]}")
    text = "".join(block.get("text", "") for block in reply["content"])
    return f"{reply['usage']['output_tokens']} tokens: {text.strip()[:40]!r}"


SMOKE_CHECKS: list[tuple[str, Callable[[Any, Target, str], str]]] = [
    ("GET /health", _health),
    ("GET /v1/models", _models),
    ("POST /v1/chat/completions", _chat),
    ("POST /v1/chat/completions (stream)", _chat_stream),
    ("POST /v1/messages", _messages),
]


def smoke(target: Target) -> list[CheckResult]:
    """Each smoke request once, in order; every one is reported, none stops the others."""
    import httpx

    results = []
    with target.client() as client:
        model = pick_model(client, target)
        for name, check in SMOKE_CHECKS:
            started = time.perf_counter()
            try:
                detail, passed = check(client, target, model), True
            except httpx.HTTPError as exc:
                detail, passed = f"{type(exc).__name__}: {exc}", False
            except (AssertionError, KeyError, IndexError, TypeError, ValueError) as exc:
                detail, passed = str(exc) or type(exc).__name__, False
            results.append(CheckResult(name, passed, detail, time.perf_counter() - started))
    return results


LOAD_COLUMNS = ["requests", "concurrency", "ok", "lost", "failed", "p50 ms", "p95 ms", "p99 ms", "req/s"]


@dataclass
class LoadReport:
    """What happened to N requests: lost = no response at all, failed = a response that is not a reply."""

    requests: int
    concurrency: int
    latencies_s: list[float] = field(default_factory=list)
    lost: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    def percentile(self, q: int) -> float:
        if not self.latencies_s:
            return float("nan")
        if len(self.latencies_s) == 1:
            return self.latencies_s[0]
        return statistics.quantiles(self.latencies_s, n=100, method="inclusive")[q - 1]

    def row(self) -> tuple[object, ...]:
        """The table row people compare: counts, latency percentiles in ms, throughput."""
        ms = [f"{self.percentile(q) * 1000:.0f}" if self.ok else "-" for q in (50, 95, 99)]
        rate = f"{self.ok / self.wall_s:.1f}" if self.wall_s else ""
        return (self.requests, self.concurrency, self.ok, self.lost, self.failed, *ms, rate)

    def raise_on_losses(self) -> None:
        if self.lost or self.failed:
            reasons = ", ".join(f"{reason} x{n}" for reason, n in self.errors.items())
            raise HomelabError(
                f"{self.lost} lost and {self.failed} failed of {self.requests}: {reasons}",
                "lost = no answer: is the server up at that URL? (inv server.status); failed: see its log",
            )

    def _count(self, kind: str, reason: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.errors[reason] = self.errors.get(reason, 0) + 1


def check_load_bounds(
    target: Target, requests: int, concurrency: int, limit: int, allow_remote: bool
) -> None:
    """Refuse loads that could hurt: above the configured cap, or aimed off this machine unasked."""
    if requests < 1 or concurrency < 1:
        raise HomelabError("requests and concurrency must be at least 1", "pass positive numbers")
    if requests > limit:
        raise HomelabError(
            f"{requests} requests is above test.stress_max_requests ({limit})",
            "send fewer, or raise the cap in invoke.yaml",
        )
    if not allow_remote and not is_loopback(target.url):
        raise HomelabError(
            f"{target.url} is not a loopback address",
            "pass --allow-remote to load another machine on purpose",
        )


def load(target: Target, requests: int, concurrency: int) -> LoadReport:
    """Send `requests` chat completions, `concurrency` at a time, and classify every outcome."""
    import httpx

    report = LoadReport(requests, concurrency)
    lock = threading.Lock()
    with target.client() as client:
        body = _chat_body(pick_model(client, target), target.max_tokens)

        def one(_: int) -> None:
            started = time.perf_counter()
            try:
                response = client.post("/v1/chat/completions", json=body)
                reply = response.json() if response.status_code == 200 else {}
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                with lock:
                    report._count("lost", type(exc).__name__)
                return
            except ValueError:
                reply = {}
            elapsed = time.perf_counter() - started
            with lock:
                if reply.get("choices"):
                    report.latencies_s.append(elapsed)
                else:
                    report._count("failed", f"HTTP {response.status_code}")

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, range(requests)))
        report.wall_s = time.perf_counter() - started
    return report


def listening_pid(url: str) -> int:
    """The process listening on the URL's port on this machine."""
    import psutil

    port = urlsplit(url).port or 80
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        raise HomelabError("cannot list sockets here without privileges", "pass --pid PID") from None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return int(conn.pid)
    raise HomelabError(f"no process of yours listens on port {port}", "start the server, or pass --pid PID")


@dataclass(frozen=True)
class MemoryReport:
    pid: int
    idle_mb: float
    peak_mb: float
    budget_mb: int
    load: LoadReport

    @property
    def within_budget(self) -> bool:
        return self.peak_mb <= self.budget_mb


def memory(target: Target, pid: int, budget_mb: int, requests: int, concurrency: int) -> MemoryReport:
    """Peak RSS of the server process (and its children) while it serves a bounded load."""
    import psutil

    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        raise HomelabError(
            f"no process with pid {pid}", "start the server, or pass the right --pid"
        ) from None

    def rss_mb() -> float:
        try:
            family = [process, *process.children(recursive=True)]
            return sum(p.memory_info().rss for p in family) / 2**20
        except psutil.NoSuchProcess:
            return 0.0

    idle = rss_mb()
    samples = [idle]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            samples.append(rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        report = load(target, requests, concurrency)
    finally:
        stop.set()
        sampler.join()
    samples.append(rss_mb())
    return MemoryReport(pid, idle, max(samples), budget_mb, report)


def target(settings: Settings, url: str = "", model: str = "") -> Target:
    """The server to test: the URL given (with the configured key), else the server `inv server.start`
    left running here (its own address and key), else the configured address."""
    from tasks.core import server_state

    parts = urlsplit(url)
    if url and (parts.scheme not in ("http", "https") or not parts.hostname):
        raise HomelabError(f"'{url}' is not a server URL", "give one like http://127.0.0.1:8080")
    if url:
        endpoint = server_state.Endpoint(url.rstrip("/"), server_state.api_key(settings.server), "")
    else:
        endpoint = server_state.endpoint(server_state.StateFiles(settings.server.state_dir), settings.server)
    return Target(
        url=endpoint.url,
        api_key=endpoint.api_key,
        timeout_s=settings.test.request_timeout_s,
        max_tokens=settings.test.max_tokens,
        model=model,
        fallback_model=settings.server.model,
    )
