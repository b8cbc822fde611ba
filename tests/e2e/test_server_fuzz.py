"""A property-based fuzz of the server's own OpenAPI schema (schemathesis), on the bundled model.

Every operation gets requests that fit its schema and requests that break it (schemathesis's positive
and negative modes), a bounded number per operation, from a fixed seed so a failure repeats. Each
answer must be below 500 and, when it is an error, in its API's envelope. Two changes to what is
generated keep it about the server rather than the model: `model` is a served name in valid requests
(random names would all stop at the 404), and generation is tiny (max_tokens, or Ollama's num_predict, at
most 4).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET

from tests.fixtures.server import RunningServer

MAX_EXAMPLES = 8  # per operation: 43 cases (before /v1/responses) took 157 s at load 8 on 2 cores
MAX_TOKENS = 4
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
OPENAI_GENERATION = {
    "/v1/chat/completions": "max_tokens",
    "/v1/completions": "max_tokens",
    "/v1/responses": "max_output_tokens",
}
OLLAMA_GENERATION = ("/api/chat", "/api/generate")
TIMEOUT = 120  # seconds: the test machine is small and shared; a bound for a hung server only

# e2e by its folder already; said here too, so the fuzz never lands in a quick suite by a move.
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def server_schema(inference_server: RunningServer) -> Any:
    """The schema the running server serves (asked with the key), its `model` fields narrowed."""
    headers = {"x-api-key": inference_server.api_key}
    document = httpx.get(f"{inference_server.url}/openapi.json", headers=headers, timeout=TIMEOUT).json()
    served = [inference_server.settings.default_model, "claude-haiku-4-5"]  # a name and a claude-* alias
    for component in document["components"]["schemas"].values():
        model = component.get("properties", {}).get("model")
        if model is not None and model.get("type") == "string":
            model["enum"] = served
    return schemathesis.openapi.from_dict(document)


def tiny_generation(body: Any, path: str) -> Any:
    """The same body with every token limit the server would read as a number above MAX_TOKENS
    (pydantic also reads 1e9 and "5000" as integers) lowered to it. An OpenAI request with none
    (absent or null) gets one, since the server's default then is the rest of the context."""
    if not isinstance(body, dict):
        return body
    limited = {k: MAX_TOKENS if k in TOKEN_FIELDS and _above_max(v) else v for k, v in body.items()}
    if path in OPENAI_GENERATION and all(body.get(k) is None for k in TOKEN_FIELDS):
        limited[OPENAI_GENERATION[path]] = MAX_TOKENS
    options = body.get("options")
    if path in OLLAMA_GENERATION and (options is None or isinstance(options, dict)):
        # Ollama's num_predict: absent, -1 and -2 all mean the rest of the context
        predict = (options or {}).get("num_predict")
        if not isinstance(predict, int) or isinstance(predict, bool) or not 0 < predict <= MAX_TOKENS:
            limited["options"] = {**(options or {}), "num_predict": MAX_TOKENS}
    return limited


def _above_max(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    try:
        return float(value) > MAX_TOKENS
    except ValueError:
        return False


def envelope_problem(path: str, status: int, content: bytes) -> str:
    """What is wrong with an error answer's body for the API at `path`, or "" when it is right."""
    try:
        answer = json.loads(content)
    except ValueError:
        return f"{status} with a body that is not JSON: {content[:200]!r}"
    if path.startswith("/api/"):
        error = answer.get("error") if isinstance(answer, dict) else None
        ok = isinstance(error, str) and bool(error)
        return "" if ok else f'{status} not in Ollama\'s {{"error": "..."}}: {content[:300]!r}'
    if path.startswith("/v1/messages"):
        error = answer.get("error") if isinstance(answer, dict) else None
        ok = answer.get("type") == "error" and isinstance(error, dict) and isinstance(error.get("type"), str)
        shape = 'Anthropic\'s {"type": "error", "error": {"type", "message"}}'
    else:
        error = answer.get("error") if isinstance(answer, dict) else None
        ok = isinstance(error, dict) and isinstance(error.get("type"), str)
        shape = 'OpenAI\'s {"error": {"message", "type", "param", "code"}}'
    if ok and isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
        return ""
    return f"{status} not in {shape}: {content[:300]!r}"


def test_no_request_the_schema_describes_gets_a_5xx_or_an_error_outside_the_envelope(
    server_schema: Any, inference_server: RunningServer
) -> None:
    """Each operation is fuzzed on its own and every failure is collected, so one run names them all.

    schemathesis's own pytest runner (`from_fixture`) needs pytest's private `Node._nodeid`, which
    pytest 9.2 no longer has; its strategies run under plain hypothesis here instead.
    """
    cases: Counter[str] = Counter()
    operations = [result.ok() for result in server_schema.get_all_operations()]
    failures = [f for operation in operations for f in fuzz(operation, inference_server, cases)]
    print(f"fuzzed {cases.total()} cases:", dict(cases))
    assert set(cases) == {operation.label for operation in operations}, "an operation got no case"
    assert not failures, "\n".join(failures)


def fuzz(operation: Any, server: RunningServer, cases: Counter[str]) -> list[str]:
    """MAX_EXAMPLES valid and invalid cases for one operation; what failed, in hypothesis's words."""

    @given(case=st.one_of([operation.as_strategy(generation_mode=mode) for mode in GenerationMode]))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,  # the same cases every run: a failure repeats, a pass means the same
        database=None,  # nothing written into the checkout
        deadline=None,  # a loaded machine must not fail a case for being slow
        phases=(Phase.explicit, Phase.generate),  # no shrinking: its request count is unbounded
        suppress_health_check=list(HealthCheck),
    )
    def one(case: schemathesis.Case) -> None:
        cases[operation.label] += 1
        check_answer(case, server)

    try:
        one()
    except BaseExceptionGroup as found:  # hypothesis tells distinct failures apart
        return [f"{operation.label}: {exc}" for exc in found.exceptions]
    except AssertionError as exc:
        return [f"{operation.label}: {exc}"]
    return []


def check_answer(case: schemathesis.Case, server: RunningServer) -> None:
    """Send the case (with the key, tiny generation); below 500, and errors in their API's envelope."""
    if case.body is not NOT_SET:
        case.body = tiny_generation(case.body, case.path)
    request = f"{case.method} {case.formatted_path} {case.body!r}"
    try:
        response = case.call(base_url=server.url, headers={"x-api-key": server.api_key}, timeout=TIMEOUT)
    except OSError as exc:  # requests' errors are OSErrors: no answer within TIMEOUT, or none at all
        raise AssertionError(f"{request} -> no answer: {type(exc).__name__}") from None
    assert response.status_code < 500, f"{request} -> {response.status_code} {response.content[:300]!r}"
    if response.status_code >= 400 and case.path != "/health":
        problem = envelope_problem(case.path, response.status_code, response.content)
        assert not problem, f"{request} -> {problem}"
