"""Ollama's API through the official `ollama` Python client, on one server for the module.

The server runs this checkout's tasks for /api/pull and /api/delete with an invoke.yaml that points
at the test hub (tests/fixtures/hub.py), so a pull is a real resumable download of the hub's `tiny`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import jsonschema
import ollama
import pytest
import yaml

from tasks.core.server import MANAGE_COMMAND
from tests.fixtures.hub import MB, HubServer, hub_catalog
from tests.fixtures.server import TIMEOUT, RunningServer, running_server, settings_for_test

ASK = [{"role": "user", "content": "Say hello."}]
FEW = {"num_predict": 8, "temperature": 0}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
FORECAST = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOLS = [
    {"type": "function", "function": {"name": "forecast", "description": "Weather", "parameters": FORECAST}}
]


@pytest.fixture(scope="module")
def server(hub: HubServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The bundled models, with pull and delete going to the test hub and a private cache."""
    root = tmp_path_factory.mktemp("ollama")
    catalog_file = root / "catalog.yaml"
    catalog_file.write_text(yaml.safe_dump(hub_catalog(hub), sort_keys=False))
    models = {"catalog": str(catalog_file), "cache_dir": str(root / "hf-cache"), "hub_endpoint": hub.url}
    invoke_yaml = root / "invoke.yaml"
    invoke_yaml.write_text(yaml.safe_dump({"models": {**models, "hub_token": "", "free_space_margin_mb": 0}}))
    settings = settings_for_test(
        models="smollm2,gemma3", context_size=2048, manage_command=[*MANAGE_COMMAND, "-f", str(invoke_yaml)]
    )
    with running_server(root / "state", settings) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> ollama.Client:
    return ollama.Client(
        host=server.url, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=TIMEOUT
    )


def test_list_shows_every_servable_model_with_its_header_details(client: ollama.Client) -> None:
    listed = {m.model: m for m in client.list().models}
    aliases = set(listed) - {"smollm2", "gemma3"}  # the plain-name aliases (claude-*), listed as copies
    assert {"smollm2", "gemma3"} <= set(listed) and aliases
    assert {listed[a].digest for a in aliases} <= {listed["smollm2"].digest, listed["gemma3"].digest}
    smol = listed["smollm2"]
    assert smol.details is not None and smol.digest is not None
    assert (smol.details.format, smol.details.family, smol.details.quantization_level) == (
        "gguf",
        "llama",
        "Q4_1",
    )
    assert smol.details.parameter_size == "134.52M"
    assert smol.digest.startswith("sha256:") and len(smol.digest) == 71
    assert smol.size == 98362432
    assert listed["gemma3"].details is not None and listed["gemma3"].details.family == "gemma3"


def test_show_gives_template_parameters_and_context_length(client: ollama.Client) -> None:
    shown = client.show("smollm2")
    assert shown.template is not None and "im_start" in shown.template
    assert shown.parameters is not None and "num_ctx 2048" in shown.parameters
    assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == 8192
    assert shown.modelinfo["general.parameter_count"] == 134515008
    assert client.show("smollm2:latest").template == shown.template  # clients add the tag


def test_chat_whole_reports_counts_and_durations(client: ollama.Client) -> None:
    reply = client.chat("smollm2", messages=ASK, options=FEW, stream=False)
    assert reply.done and reply.done_reason == "length" and reply.message.role == "assistant"
    assert reply.message.content and reply.eval_count == 8 and reply.prompt_eval_count
    assert reply.total_duration and reply.eval_duration and reply.prompt_eval_duration
    assert reply.total_duration >= reply.eval_duration + reply.prompt_eval_duration


def test_chat_streams_the_same_text_then_one_done_object(client: ollama.Client) -> None:
    whole = client.chat("smollm2", messages=ASK, options=FEW)
    chunks = list(client.chat("smollm2", messages=ASK, options=FEW, stream=True))
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.message.content or "" for c in chunks) == whole.message.content
    assert chunks[-1].eval_count == 8 and chunks[-1].done_reason == "length"


def test_generate_stops_at_a_stop_string(client: ollama.Client) -> None:
    greedy = {"num_predict": 12, "temperature": 0}
    free = client.generate("smollm2", "Count to ten.", options=greedy).response
    stop = free[6:9]
    cut = client.generate("smollm2", "Count to ten.", options={**greedy, "stop": [stop]})
    assert cut.response == free[: free.index(stop)] and cut.done_reason == "stop"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_format_schema_answers_validate(client: ollama.Client, stream: bool) -> None:
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": "A person as JSON."}],
        "format": PERSON,
    }
    if stream:
        text = "".join(c.message.content or "" for c in client.chat("smollm2", **request, stream=True))
    else:
        text = client.chat("smollm2", **request).message.content or ""
    jsonschema.validate(json.loads(text), PERSON)


def test_generate_format_json_is_an_object(client: ollama.Client) -> None:
    answer = client.generate("smollm2", "A city as JSON.", format="json", options={"num_predict": 60})
    assert isinstance(json.loads(answer.response), dict)


def test_chat_with_tools_takes_ollamas_call_history(client: ollama.Client) -> None:
    """An earlier call (arguments as an object, no id) and its result by tool_name reach the model:
    the prompt grows by them, and any new call comes back in Ollama's shape."""
    call = {"function": {"name": "forecast", "arguments": {"city": "Paris", "unit": "celsius"}}}
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_name": "forecast", "content": "18 degrees and sunny"},
    ]
    plain = client.chat("smollm2", messages=history[:1], tools=TOOLS, options=FEW)
    after = client.chat("smollm2", messages=history, tools=TOOLS, options=FEW)
    assert after.prompt_eval_count and plain.prompt_eval_count
    assert after.prompt_eval_count > plain.prompt_eval_count + 10
    for made in after.message.tool_calls or []:
        jsonschema.validate(dict(made.function.arguments), FORECAST)


def test_embed_gives_one_unit_vector_per_input_and_the_old_endpoint_agrees(client: ollama.Client) -> None:
    texts = ["A cat sat on the mat.", "Stock markets fell sharply today."]
    embedded = client.embed("smollm2", texts)
    assert len(embedded.embeddings) == 2 and embedded.prompt_eval_count
    for vector in embedded.embeddings:
        assert abs(math.fsum(x * x for x in vector) - 1) < 1e-6
    old = client.embeddings("smollm2", texts[0]).embedding
    assert max(abs(a - b) for a, b in zip(old, embedded.embeddings[0], strict=True)) < 1e-4
    short = client.embed("smollm2", texts[0], dimensions=64).embeddings[0]
    assert len(short) == 64


def test_keep_alive_0_unloads_and_an_empty_prompt_loads(client: ollama.Client) -> None:
    loaded = client.generate("gemma3", "", keep_alive="5m")
    assert loaded.done and loaded.done_reason == "load"
    running = {m.model: m for m in client.ps().models}
    assert "gemma3" in running and running["gemma3"].expires_at is not None
    assert running["gemma3"].expires_at > datetime.now(UTC)
    assert running["gemma3"].size_vram == 0 and running["gemma3"].context_length == 2048
    unloaded = client.chat("gemma3", messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert "gemma3" not in {m.model for m in client.ps().models}


def test_pull_streams_progress_then_serves_the_model_and_delete_removes_it(
    client: ollama.Client, hub: HubServer
) -> None:
    tiny = hub.repos["test-org/tiny-GGUF"].files["tiny-Q4_K_M.gguf"]
    progress = list(client.pull("tiny", stream=True))
    assert progress[0].status == "pulling manifest" and progress[-1].status == "success"
    files = [p for p in progress if p.digest]
    assert {p.digest for p in files} == {f"sha256:{tiny.sha256}"} and {p.total for p in files} == {3 * MB}
    assert [p.completed for p in files] == sorted(p.completed or 0 for p in files)
    assert files[-1].completed == 3 * MB
    assert "tiny" in {m.model for m in client.list().models}  # served without a restart

    assert client.delete("tiny").status == "success"
    assert "tiny" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as gone:
        client.delete("tiny")
    assert gone.value.status_code == 404


def test_pull_of_an_unknown_name_is_ollamas_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.pull("no-such-model")
    assert refused.value.status_code == 404 and refused.value.error == "model 'no-such-model' not found"


def test_the_default_model_is_not_deleted(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as refused:
        client.delete("smollm2")
    assert refused.value.status_code == 400 and "default" in refused.value.error


def test_unknown_model_is_ollamas_404(client: ollama.Client) -> None:
    for call in (
        lambda: client.chat("nope", messages=ASK),
        lambda: client.generate("nope", "hi"),
        lambda: client.show("nope"),
    ):
        with pytest.raises(ollama.ResponseError) as refused:
            call()
        assert (refused.value.status_code, refused.value.error) == (404, "model 'nope' not found")


@pytest.mark.parametrize(
    ("path", "request_body", "says"),
    [
        ("/api/chat", {"model": "smollm2", "messages": "hi"}, "messages"),
        (
            "/api/chat",
            {"model": "smollm2", "messages": ASK, "options": {"temperature": "hot"}},
            "temperature",
        ),
        ("/api/chat", {"model": "smollm2", "messages": ASK, "format": "yaml"}, "format"),
        ("/api/generate", {"model": "smollm2", "prompt": "x", "keep_alive": "soon"}, "keep_alive"),
        ("/api/generate", {"model": "smollm2", "prompt": "x", "suffix": "y"}, "suffix"),
        ("/api/chat", {"messages": ASK}, "model"),
        ("/api/nothing", {}, "Not Found"),
    ],
)
def test_bad_input_is_a_4xx_in_ollamas_shape(
    server: RunningServer, path: str, request_body: dict[str, Any], says: str
) -> None:
    answer = httpx.post(
        server.url + path,
        json=request_body,
        headers={"Authorization": f"Bearer {server.api_key}"},
        timeout=TIMEOUT,
    )
    assert 400 <= answer.status_code < 500
    assert list(answer.json()) == ["error"] and says in answer.json()["error"]


def test_the_api_key_is_required(server: RunningServer) -> None:
    answer = httpx.get(server.url + "/api/tags", timeout=TIMEOUT)
    assert answer.status_code == 401 and list(answer.json()) == ["error"]


def test_version(client: ollama.Client, server: RunningServer) -> None:
    answer = httpx.get(server.url + "/api/version", headers={"Authorization": f"Bearer {server.api_key}"})
    assert answer.json()["version"].count(".") == 2
