"""Translation between the APIs' shapes and the engine's: messages, blocks, errors, settings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from inference_server.admission import Admission, QueueFull
from inference_server.anthropic import protocol as anthropic_protocol
from inference_server.anthropic.serving import system_prompt
from inference_server.engines import factory
from inference_server.engines.base import EngineError
from inference_server.errors import body
from inference_server.settings import ServerSettings
from inference_server.streaming import HOLE, filler, sse

MODEL = {
    "name": "smollm2",
    "path": "/models/smollm2.gguf",
    "format": "gguf",
    "context_size": 2048,
    "slots": 2,
    "keep_alive_s": 300,
    "pinned": False,
}
SETTINGS = {
    "models": [MODEL],
    "default_model": "smollm2",
    "model_aliases": [{"pattern": "claude-*", "model": "smollm2"}],
    "engine": "auto",
    "host": "127.0.0.1",
    "port": 8080,
    "api_key": "",
    "queue_size": 4,
    "prefix_cache_bytes": 0,
    "threads": 0,
    "memory_budget_bytes": 2**30,
    "swap_grace_s": 1,
    "strip_billing_header": True,
    "ui_prompt_text": False,
    "allowed_hosts": ["localhost", "127.0.0.1", "::1"],
    "stop_grace_s": 5,
    "manage_command": ["inv"],
    "rpc_servers": [],
    "rpc_watch": "",
}


def test_billing_header_line_is_stripped_only_when_configured() -> None:
    blocks = [
        anthropic_protocol.Block(type="text", text="x-anthropic-billing-header: cc=1;\nYou are Claude Code.")
    ]
    assert system_prompt(blocks, strip_billing_header=True) == "You are Claude Code."
    assert system_prompt(blocks, strip_billing_header=False).startswith("x-anthropic-billing-header")


def test_errors_use_each_apis_envelope() -> None:
    assert body("authentication", "no", anthropic=True) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "no"},
    }
    assert body("context_length", "long", anthropic=False)["error"] == {
        "message": "long",
        "type": "invalid_request_error",
        "param": None,
        "code": "context_length_exceeded",
    }
    assert body("not_found", "model 'x' not found", anthropic=False, ollama=True) == {
        "error": "model 'x' not found"
    }


def test_settings_refuse_off_loopback_without_a_key() -> None:
    with pytest.raises(ValidationError, match=r"refusing to listen on 0\.0\.0\.0 without an API key"):
        ServerSettings.model_validate({**SETTINGS, "host": "0.0.0.0"})
    assert ServerSettings.model_validate({**SETTINGS, "host": "0.0.0.0", "api_key": "k"}).host == "0.0.0.0"
    assert ServerSettings.model_validate({**SETTINGS, "host": "localhost"}).url == "http://localhost:8080"
    assert ServerSettings.model_validate({**SETTINGS, "host": "::1"}).url == "http://[::1]:8080"


def test_engine_follows_the_model_format_unless_named() -> None:
    assert factory.choose("auto", "gguf") == "llama_cpp"
    assert factory.choose("auto", "mlx") == "mlx"
    assert factory.choose("auto", "safetensors") == "mlx"
    with pytest.raises(EngineError, match="convert"):
        factory.choose("mlx", "gguf")
    with pytest.raises(EngineError, match="GGUF"):
        factory.choose("llama_cpp", "mlx")


def test_settings_refuse_an_unknown_default_a_twice_named_model_and_an_alias_to_nowhere() -> None:
    with pytest.raises(ValidationError, match="default_model 'qwen' is not one of the models"):
        ServerSettings.model_validate({**SETTINGS, "default_model": "qwen"})
    with pytest.raises(ValidationError, match="a name appears twice"):
        ServerSettings.model_validate({**SETTINGS, "models": [MODEL, MODEL]})
    with pytest.raises(ValidationError, match="alias 'claude-\\*' routes to 'qwen'"):
        ServerSettings.model_validate(
            {**SETTINGS, "model_aliases": [{"pattern": "claude-*", "model": "qwen"}]}
        )


def test_a_name_routes_to_its_model_else_to_the_first_alias_that_matches() -> None:
    other = {**MODEL, "name": "gemma3", "path": "/models/gemma3.gguf"}
    aliases = [{"pattern": "claude-haiku-*", "model": "gemma3"}, {"pattern": "claude-*", "model": "smollm2"}]
    settings = ServerSettings.model_validate({**SETTINGS, "models": [MODEL, other], "model_aliases": aliases})
    routed = {
        name: getattr(settings.route(name), "name", None)
        for name in ["gemma3", "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4", "gpt-4"]
    }
    assert routed == {
        "gemma3": "gemma3",
        "claude-haiku-4-5": "gemma3",
        "claude-sonnet-4-6": "smollm2",
        "claude-opus-4": "smollm2",
        "gpt-4": None,
    }


def test_admission_refuses_beyond_the_queue_bound() -> None:
    async def scenario() -> None:
        admission = Admission(slots=1, queue_size=1)
        await admission.acquire()
        waiter = asyncio.create_task(admission.acquire())
        await asyncio.sleep(0)
        assert admission.waiting == 1
        with pytest.raises(QueueFull):
            await admission.acquire()
        admission.release()
        await waiter
        assert (admission.active, admission.waiting) == (1, 0)

    asyncio.run(scenario())


def test_settings_round_trip_through_json(tmp_path: Path) -> None:
    from inference_server.settings import load

    settings = ServerSettings.model_validate(SETTINGS)
    (tmp_path / "s.json").write_text(settings.model_dump_json())
    assert load(tmp_path / "s.json") == settings


def test_health_answers_503_until_the_model_is_loaded_and_a_failed_load_names_model_and_reason() -> None:
    """The real app before its startup has run: a request loads the model, whose file is missing."""
    from fastapi.testclient import TestClient

    from inference_server.app import create_app

    client = TestClient(create_app(ServerSettings.model_validate(SETTINGS)), base_url="http://127.0.0.1")
    health = client.get("/health")
    assert (health.status_code, health.json()["status"]) == (503, "loading")
    question = {"model": "smollm2", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}
    refused = client.post("/v1/messages", json=question)
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    error = refused.json()["error"]
    assert error["type"] == "overloaded_error"
    assert error["message"].startswith("model 'smollm2' failed to load: ")
    assert "smollm2.gguf" in error["message"]
    assert client.get("/health").json()["detail"].startswith("loading failed: ")
    again = client.post("/v1/messages", json=question)  # the next request tries the load again
    assert again.status_code == 503 and "failed to load" in again.json()["error"]["message"]
    metrics = client.get("/metrics").text
    assert 'homelab_model_loads_total{model="smollm2",outcome="failed"} 2.0' in metrics


@pytest.mark.parametrize("text", ["Hello", ' quotes " and \\ back', "é ☃ \u2028 line\nbreak", "\x00"])
def test_filled_event_is_the_event_serialized_with_that_text(text: str) -> None:
    data = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
    template = {**data, "delta": {"type": "text_delta", "text": HOLE}}

    assert filler(sse(template, event="content_block_delta"))(text) == sse(data, event="content_block_delta")


def test_a_keyless_server_answers_only_loopback_host_names_in_its_own_envelope() -> None:
    """DNS rebinding: a page's own name, rebound to 127.0.0.1, arrives in Host and is refused."""
    from fastapi.testclient import TestClient

    from inference_server.app import create_app

    app = create_app(ServerSettings.model_validate(SETTINGS))
    rebound = TestClient(app, base_url="http://evil.example:8080")
    refused = rebound.post("/v1/messages", json={})
    assert refused.status_code == 400
    assert refused.json()["type"] == "error" and "server.allowed_hosts" in refused.json()["error"]["message"]
    assert rebound.get("/v1/models").json()["error"]["type"] == "invalid_request_error"
    for name in ("http://localhost:8080", "http://127.0.0.1", "http://[::1]:8080"):
        assert TestClient(app, base_url=name).get("/health").status_code == 503  # loading, not refused
    keyed = create_app(ServerSettings.model_validate({**SETTINGS, "api_key": "k"}))
    assert TestClient(keyed, base_url="http://evil.example").get("/health").status_code == 503


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read() -> None:
    from fastapi.testclient import TestClient

    from inference_server.app import create_app
    from inference_server.guard import MAX_BODY_BYTES

    client = TestClient(create_app(ServerSettings.model_validate(SETTINGS)), base_url="http://127.0.0.1")
    huge = b"x" * (MAX_BODY_BYTES + 1)
    sized = client.post("/v1/chat/completions", content=huge, headers={"content-type": "application/json"})
    assert sized.status_code == 413 and sized.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 1):
            yield b"x" * (1 << 20)

    streamed = client.post("/v1/messages", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error"]["type"] == "request_too_large"


def test_the_openapi_schema_wants_the_key_when_one_is_set() -> None:
    from fastapi.testclient import TestClient

    from inference_server.app import create_app

    keyed = TestClient(create_app(ServerSettings.model_validate({**SETTINGS, "api_key": "k"})))
    assert keyed.get("/openapi.json").status_code == 401
    assert "/v1/messages" in keyed.get("/openapi.json", headers={"x-api-key": "k"}).json()["paths"]


def test_keep_alive_durations_read_as_ollama_writes_them() -> None:
    from inference_server.durations import seconds

    read = [seconds(v) for v in (300, 2.5, "90", "30s", "5m", "1h30m", "250ms", -5, "-1", "-1m", 0, "0")]
    assert read == [300, 2.5, 90, 30, 300, 5400, 0.25, -1, -1, -1, 0, 0]
    for bad in ("soon", "5 m", "m5", True, ""):
        with pytest.raises(ValueError, match="duration"):
            seconds(bad)


def test_rpc_servers_must_be_tunnel_ends_on_loopback() -> None:
    ServerSettings.model_validate({**SETTINGS, "rpc_servers": ["127.0.0.1:5000"]})
    with pytest.raises(ValidationError, match=r"192\.168\.1\.9:50052 is not a loopback"):
        ServerSettings.model_validate({**SETTINGS, "rpc_servers": ["192.168.1.9:50052"]})
