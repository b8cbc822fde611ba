"""Both APIs through the official SDKs (and raw HTTP for errors) against the real server."""

from __future__ import annotations

import asyncio
import json
import re
import time
from functools import partial
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fixtures.server import TIMEOUT, RunningServer

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
get = partial(httpx.get, timeout=TIMEOUT)
post = partial(httpx.post, timeout=TIMEOUT)
open_stream = partial(httpx.stream, timeout=TIMEOUT)
LONG_ANSWER = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]
SYSTEM = "You are a helpful assistant for a homelab. " * 40  # long enough that reuse is plain to see


def auth(server: RunningServer) -> dict[str, str]:
    return {"x-api-key": server.api_key}


def metric(server: RunningServer, name: str) -> float:
    text = get(f"{server.url}/metrics", headers=auth(server)).text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def test_openai_chat_answers_with_usage(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 8
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens is not None


def test_openai_chat_streams_deltas_then_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="smollm2",
            messages=QUESTION,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 8


def test_openai_completion_ends_at_stop_string(oai: openai.OpenAI) -> None:
    prompt = "The three primary colours are"
    full = oai.completions.create(model="smollm2", prompt=prompt, max_tokens=16, temperature=0).choices[0]
    words = full.text.split()
    assert len(words) >= 3, full.text
    stop = words[2]
    cut = oai.completions.create(model="smollm2", prompt=prompt, max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == full.text[: full.text.index(stop)]


def test_openai_completion_streams_text_then_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.completions.create(
            model="smollm2",
            prompt="The three primary colours are",
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] in (
        ["stop"],
        ["length"],
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert 0 < chunks[-1].usage.completion_tokens <= 6


def test_same_seed_samples_the_same_answer_and_other_seeds_differ(oai: openai.OpenAI) -> None:
    """Same seed, same answer; and the seed matters: were temperature ignored (greedy), or the seed,
    five seeds would give one answer."""

    def sample(seed: int) -> str | None:
        reply = oai.chat.completions.create(
            model="smollm2", messages=LONG_ANSWER, max_tokens=12, temperature=1.0, top_p=0.95, seed=seed
        )
        return reply.choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(1, 6)}) >= 2


def test_repeated_prompt_reports_cached_prefix_tokens(oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": SYSTEM}, *QUESTION]
    oai.chat.completions.create(model="smollm2", messages=messages, max_tokens=2, temperature=0)
    again = oai.chat.completions.create(model="smollm2", messages=messages, max_tokens=2, temperature=0)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert again.usage.prompt_tokens_details.cached_tokens >= 0.9 * again.usage.prompt_tokens


def test_anthropic_message_reports_stop_reason_and_usage(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-haiku-4-5",
        max_tokens=6,
        system=[{"type": "text", "text": "x-anthropic-billing-header: cc_version=1\nYou are terse."}],
        messages=QUESTION,
    )
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.model == "claude-haiku-4-5"
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 0
    assert 0 < message.usage.output_tokens <= 6


def test_anthropic_message_ends_at_a_stop_sequence(claude: anthropic.Anthropic) -> None:
    greedy = {"temperature": 0}  # this SDK no longer has the argument; Claude Code still sends it

    def answer(**extra: Any) -> anthropic.types.Message:
        return claude.messages.create(
            model="smollm2", max_tokens=16, messages=QUESTION, extra_body=greedy, **extra
        )

    full = answer()
    assert full.content[0].type == "text"
    words = full.content[0].text.split()
    assert len(words) >= 3, full.content[0].text
    stop = words[2]
    cut = answer(stop_sequences=[stop])
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)
    assert cut.content[0].type == "text"
    assert cut.content[0].text == full.content[0].text[: full.content[0].text.index(stop)]


def test_billing_header_line_does_not_count_or_break_the_prefix_cache(claude: anthropic.Anthropic) -> None:
    """Claude Code's first system line changes every request; stripped, the rest is served from cache."""

    def system(billing: str) -> list[anthropic.types.TextBlockParam]:
        return [
            {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2; cch={billing};\n{SYSTEM}"}
        ]

    plain = claude.messages.count_tokens(model="smollm2", system=SYSTEM, messages=QUESTION)
    headed = claude.messages.count_tokens(model="smollm2", system=system("a1"), messages=QUESTION)
    assert headed.input_tokens == plain.input_tokens
    claude.messages.create(model="claude-haiku-4-5", max_tokens=2, system=system("b2"), messages=QUESTION)
    second = claude.messages.create(
        model="claude-haiku-4-5", max_tokens=2, system=system("c3"), messages=QUESTION
    )
    cached = second.usage.cache_read_input_tokens or 0
    assert cached >= 0.9 * plain.input_tokens
    assert second.usage.input_tokens + cached == plain.input_tokens


def test_anthropic_stream_through_the_sdk(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=8, messages=QUESTION) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.output_tokens > 0


def test_anthropic_stream_sends_the_exact_event_sequence(inference_server: RunningServer) -> None:
    request = {"model": "smollm2", "max_tokens": 5, "stream": True, "messages": QUESTION}
    with open_stream(
        "POST", f"{inference_server.url}/v1/messages?beta=true", json=request, headers=auth(inference_server)
    ) as response:
        lines = list(response.iter_lines())
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    data = [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    # ping right after message_start: the first block opens once it is known to be text or a tool call
    assert events[:3] == ["message_start", "ping", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[3:-3]) == {"content_block_delta"}
    assert [d["type"] for d in data] == events
    assert data[-2]["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert 0 < data[-2]["usage"]["output_tokens"] <= 5


def test_anthropic_accepts_tools_images_and_unknown_fields(inference_server: RunningServer) -> None:
    request = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 4,
        "tools": [{"name": "ls", "description": "list", "input_schema": {"type": "object"}}],
        "thinking": {"type": "disabled"},
        "metadata": {"user_id": "u"},
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "List files."}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "a.txt"}],
                    },
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {"type": "text", "text": "What did you find?", "cache_control": {"type": "ephemeral"}},
                ],
            },
        ],
    }
    headers = {**auth(inference_server), "anthropic-beta": "prompt-caching-2024-07-31"}
    response = post(f"{inference_server.url}/v1/messages?beta=true", json=request, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["type"] == "text"


def test_count_tokens_grows_with_the_prompt(claude: anthropic.Anthropic) -> None:
    short = claude.messages.count_tokens(model="smollm2", messages=[{"role": "user", "content": "hi"}])
    longer = claude.messages.count_tokens(
        model="smollm2", system="Be brief.", messages=[{"role": "user", "content": "hi " * 50}]
    )
    assert 0 < short.input_tokens < longer.input_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_context_overflow_says_prompt_is_too_long(
    claude: anthropic.Anthropic, stream: bool
) -> None:
    """Claude Code streams; the refusal must still be a 400 before any event, not an error event."""
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(
            model="smollm2",
            max_tokens=4,
            messages=[{"role": "user", "content": "word " * 3000}],
            stream=stream,
        )
    assert re.fullmatch(
        r"prompt is too long: \d+ tokens > \d+ maximum", raised.value.body["error"]["message"]
    )


def test_openai_context_overflow_is_context_length_exceeded(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        oai.chat.completions.create(
            model="smollm2", max_tokens=4, messages=[{"role": "user", "content": "word " * 3000}]
        )
    assert raised.value.code == "context_length_exceeded"
    assert "maximum context length" in raised.value.message


@pytest.mark.parametrize(
    ("path", "headers", "envelope"),
    [
        ("/v1/chat/completions", {}, "openai"),
        ("/v1/chat/completions", {"Authorization": "Bearer wrong"}, "openai"),
        ("/v1/messages", {}, "anthropic"),
        ("/v1/messages", {"x-api-key": "wrong"}, "anthropic"),
    ],
)
def test_missing_or_wrong_key_is_401_in_the_apis_envelope(
    inference_server: RunningServer, path: str, headers: dict[str, str], envelope: str
) -> None:
    response = post(f"{inference_server.url}{path}", json={}, headers=headers)
    assert response.status_code == 401
    body = response.json()
    if envelope == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    else:
        assert body["error"]["code"] == "invalid_api_key"


def test_key_works_as_bearer_and_as_x_api_key(inference_server: RunningServer) -> None:
    for headers in ({"Authorization": f"Bearer {inference_server.api_key}"}, auth(inference_server)):
        assert get(f"{inference_server.url}/v1/models", headers=headers).status_code == 200


def test_health_is_public(inference_server: RunningServer) -> None:
    response = get(f"{inference_server.url}/health")
    assert response.status_code == 200
    assert response.json()["engine"] == "llama_cpp"


def test_validation_errors_are_400_in_the_apis_envelope(inference_server: RunningServer) -> None:
    url, headers = inference_server.url, auth(inference_server)
    bad_anthropic = post(f"{url}/v1/messages", json={"model": "smollm2", "messages": []}, headers=headers)
    bad_openai = post(f"{url}/v1/chat/completions", json={"model": "smollm2"}, headers=headers)
    not_json = post(f"{url}/v1/messages", content=b"{not json", headers=headers)
    too_hot = post(
        f"{url}/v1/chat/completions",
        json={"model": "smollm2", "messages": QUESTION, "temperature": 5},
        headers=headers,
    )
    assert not_json.status_code == 400 and not_json.json()["type"] == "error"
    assert too_hot.status_code == 400 and too_hot.json()["error"]["message"].startswith("temperature")
    assert (
        bad_anthropic.status_code == 400 and bad_anthropic.json()["error"]["type"] == "invalid_request_error"
    )
    assert bad_openai.status_code == 400 and bad_openai.json()["error"]["message"].startswith("messages")


def test_model_list_offers_claude_names_claude_code_keeps(
    claude: anthropic.Anthropic, oai: openai.OpenAI
) -> None:
    ids = [model.id for model in claude.models.list(limit=1000)]
    assert ids[0] == "smollm2"
    assert {"claude-sonnet-5-5", "claude-haiku-5-5"} <= set(ids)  # the main and the small/fast tier
    assert "claude-*" not in ids  # patterns are accepted, not listed
    assert [model.id for model in oai.models.list()] == ids


def test_any_alias_retrieves_the_served_model(claude: anthropic.Anthropic, oai: openai.OpenAI) -> None:
    assert oai.models.retrieve("smollm2").id == "smollm2"
    assert claude.models.retrieve("claude-opus-4-1").id == "claude-opus-4-1"  # matches `claude-*`
    with pytest.raises(openai.NotFoundError, match="smollm2"):
        oai.models.retrieve("gpt-4o")


def test_unknown_model_is_404_naming_the_served_ones(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="smollm2"):
        oai.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=2)


def test_full_queue_answers_503_with_retry_after(inference_server: RunningServer) -> None:
    """Two slots generating and one request waiting fill the server; the next is refused at once.
    The two streams' 900 tokens each (both fit the 2,048-token cache) last far longer than the test."""
    url, headers = inference_server.url, auth(inference_server)
    request = {"model": "smollm2", "max_tokens": 900, "stream": True, "messages": LONG_ANSWER}

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            streams = [client.stream("POST", "/v1/chat/completions", json=request) for _ in range(2)]
            opened = [await s.__aenter__() for s in streams]
            queued = {**request, "stream": False, "max_tokens": 4}
            waiting = asyncio.create_task(client.post("/v1/chat/completions", json=queued))
            deadline = time.monotonic() + TIMEOUT
            while metric(inference_server, "homelab_queue_depth") < 1:
                assert time.monotonic() < deadline, "the third request never queued"
                await asyncio.sleep(0.05)
            refused = await client.post("/v1/chat/completions", json=request)
            assert metric(inference_server, "homelab_active_requests") == 2, "a stream ended too soon"
            for stream in streams:
                await stream.__aexit__(None, None, None)
            assert all(o.status_code == 200 for o in opened)
            await waiting
            return refused

    refused = asyncio.run(scenario())
    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"]["code"] == "overloaded"


def test_client_disconnect_mid_stream_frees_the_slot(inference_server: RunningServer) -> None:
    generated_before = metric(inference_server, "homelab_completion_tokens_total")
    request = {"model": "smollm2", "max_tokens": 1500, "stream": True, "messages": LONG_ANSWER}
    with open_stream(
        "POST", f"{inference_server.url}/v1/chat/completions", json=request, headers=auth(inference_server)
    ) as response:
        events = (line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: "))
        assert json.loads(next(events))["choices"][0]["delta"]["role"] == "assistant"
        assert json.loads(next(events))["choices"][0]["delta"]["content"]
    # A bound, not a timing: the token count below, not the wait, tells a missed disconnect.
    deadline = time.monotonic() + TIMEOUT
    while metric(inference_server, "homelab_active_requests") > 0:
        assert time.monotonic() < deadline, "the slot was not freed after the client left"
        time.sleep(0.1)
    assert metric(inference_server, "homelab_completion_tokens_total") - generated_before < 500


def test_client_giving_up_on_a_non_streamed_answer_frees_the_slot(inference_server: RunningServer) -> None:
    request = {"model": "smollm2", "max_tokens": 1500, "messages": LONG_ANSWER}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{inference_server.url}/v1/chat/completions",
            json=request,
            headers=auth(inference_server),
            timeout=1,
        )
    deadline = time.monotonic() + TIMEOUT  # a bound: a missed disconnect generates 1,500 tokens first
    while metric(inference_server, "homelab_active_requests") > 0:
        assert time.monotonic() < deadline, "the slot was not freed after the client left"
        time.sleep(0.1)


def test_metrics_count_requests_tokens_and_errors(
    inference_server: RunningServer, oai: openai.OpenAI
) -> None:
    oai.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=2)
    post(f"{inference_server.url}/v1/messages", json={}, headers={"x-api-key": "wrong"})
    text = get(f"{inference_server.url}/metrics", headers=auth(inference_server)).text
    assert re.search(r'homelab_requests_total\{path="/v1/chat/completions",status="200"\} [1-9]', text)
    assert re.search(r'homelab_errors_total\{kind="authentication"\} [1-9]', text)
    assert re.search(r"^homelab_queue_depth 0", text, re.MULTILINE)
    assert metric(inference_server, "homelab_prompt_tokens_total") > 0
    assert metric(inference_server, "homelab_time_to_first_token_seconds_count") > 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"])
def test_a_lone_surrogate_is_a_400_and_leaks_no_slot(inference_server: RunningServer, path: str) -> None:
    """Slots + queue + 1 such requests in a row: each is refused, none keeps its slot."""
    bad = '{"model":"smollm2","max_tokens":2,"messages":[{"role":"user","content":"\\ud800"}]}'
    headers = {**auth(inference_server), "content-type": "application/json"}
    for _ in range(inference_server.settings.default.slots + inference_server.settings.queue_size + 1):
        refused = post(f"{inference_server.url}{path}", content=bad, headers=headers)
        assert refused.status_code == 400, refused.text
        assert "surrogate" in refused.text
    assert metric(inference_server, "homelab_active_requests") == 0
    question = {"model": "smollm2", "max_tokens": 2, "messages": QUESTION}
    assert post(
        f"{inference_server.url}/v1/chat/completions", json=question, headers=auth(inference_server)
    ).is_success


@pytest.mark.parametrize(
    ("path", "fields", "named"),
    [
        ("/v1/chat/completions", {"seed": -1}, "seed"),
        ("/v1/chat/completions", {"logprobs": True}, "logprobs"),
        ("/v1/chat/completions", {"stop": ["x"] * 1000}, "stop"),
        ("/v1/messages", {"stop_sequences": ["y" * 100_000]}, "stop_sequences"),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {"role": "assistant", "content": None, "tool_calls": [{"function": "x"}]},
                    *QUESTION,
                ]
            },
            "tool_calls",
        ),
    ],
)
def test_what_the_server_cannot_honour_is_a_400_naming_the_field(
    inference_server: RunningServer, path: str, fields: dict[str, Any], named: str
) -> None:
    request = {"model": "smollm2", "max_tokens": 2, "messages": QUESTION, **fields}
    refused = post(f"{inference_server.url}{path}", json=request, headers=auth(inference_server))
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert named in error["message"]
    assert ("type" in refused.json()) == path.startswith("/v1/messages")


def test_a_client_that_gives_up_while_queued_leaves_the_queue_at_once(
    inference_server: RunningServer,
) -> None:
    """Both slots busy, one request queued: its client hanging up frees its place in the queue
    while the two streams still run, so the next request queues instead of being refused."""
    url, headers = inference_server.url, auth(inference_server)
    request = {"model": "smollm2", "max_tokens": 900, "stream": True, "messages": LONG_ANSWER}
    queued = {"model": "smollm2", "max_tokens": 4, "messages": QUESTION}

    async def scenario() -> int:
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=TIMEOUT) as client:
            streams = [client.stream("POST", "/v1/chat/completions", json=request) for _ in range(2)]
            opened = [await s.__aenter__() for s in streams]
            assert all(o.status_code == 200 for o in opened)
            async with httpx.AsyncClient(base_url=url, headers=headers) as impatient:
                waiting = asyncio.create_task(impatient.post("/v1/chat/completions", json=queued))
                deadline = time.monotonic() + TIMEOUT
                while metric(inference_server, "homelab_queue_depth") < 1:
                    assert time.monotonic() < deadline, "the request never queued"
                    await asyncio.sleep(0.05)
                waiting.cancel()  # the client hangs up
                await asyncio.gather(waiting, return_exceptions=True)
            while metric(inference_server, "homelab_queue_depth") > 0:
                assert time.monotonic() < deadline, "the abandoned request kept its place in the queue"
                await asyncio.sleep(0.05)
            assert metric(inference_server, "homelab_active_requests") == 2, "a stream ended too soon"
            again = asyncio.create_task(client.post("/v1/chat/completions", json=queued))
            for stream in streams:
                await stream.__aexit__(None, None, None)
            return (await again).status_code

    assert asyncio.run(scenario()) == 200
