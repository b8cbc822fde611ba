"""The real Claude Code (pinned, print mode) against the real server on the bundled model, started by
`inv server.start` with the project's defaults, as a new user would."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tasks.core import claude_code, config, server_state
from tasks.core import server as core
from tasks.core.config import PROJECT_ROOT
from tests.fixtures.claude_code import (
    CONTINUE_ARGS,
    PROMPT_ARGS,
    Exchange,
    Recorder,
    Turn,
    recording,
    run_claude,
)
from tests.fixtures.sshd import Lab, cli
from tests.ports import free_port

KEY = "claude-test-key"
# What the turns here ask of `server.claude --max-output-tokens` (the recorder test checks the cap
# that fits the context, 798): SmolLM2 at temperature 1 often runs on, and a run-on answer costs four
# caps of decoding beside Claude Code's ~5k-token prompt (~25 tok/s on two cores): 4 x 64, not 4 x 798.
SHORT_CAP = 64
FAILURES = (
    "Prompt is too long",
    "API Error",
)  # what Claude Code prints when it gives up (it retries 5xx silently)


@dataclass(frozen=True)
class Served:
    url: str
    context_size: int
    env: dict[str, str]  # what `inv` needs to see this server

    def messages(self) -> dict[str, float]:
        """/metrics' count of /v1/messages requests by status code."""
        text = httpx.get(f"{self.url}/metrics", headers={"x-api-key": KEY}, timeout=30).text
        found = re.findall(
            r'^homelab_requests_total\{path="/v1/messages",status="(\d+)"\} (\S+)$', text, re.MULTILINE
        )
        return {status: float(count) for status, count in found}

    def added(self, before: dict[str, float]) -> dict[str, float]:
        """Requests by status since `before`: each retry Claude Code made shows here."""
        now = self.messages()
        return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}

    def claude_env(self, url: str = "", cap: int = SHORT_CAP) -> dict[str, str]:
        """What `server.claude --max-output-tokens CAP` sets for this server, or for a proxy in front of
        it at `url`."""
        tiers = config.load().server
        cap = claude_code.chosen_cap(self.context_size, cap)
        return claude_code.environment(
            url or self.url, KEY, tiers.claude_model, tiers.claude_small_fast_model, cap
        )


@dataclass(frozen=True)
class User:
    home: Path
    work: Path


@pytest.fixture
def user(tmp_path_factory: pytest.TempPathFactory) -> User:
    """A new user's empty HOME and project folder, at the same two paths in every test: Claude Code
    writes both into its ~5k-token prompt, so at one path the server prefills that prompt once and
    later tests read it from the prefix cache, as one user's next session does (a turn then costs
    its tail and its answer, not a minute of prefill on two cores)."""
    base = tmp_path_factory.getbasetemp() / "claude-code-user"
    shutil.rmtree(base, ignore_errors=True)
    return User(base / "home", base / "work")


def inv(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    state = tmp_path_factory.mktemp("claude-server")
    env = {
        **os.environ,
        "INVOKE_SERVER_STATE_DIR": str(state),
        "INVOKE_SERVER_PORT": str(free_port()),
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    started = inv(env, "server.start", "--api-key", KEY)
    assert started.returncode == 0, started.stdout + started.stderr
    files = server_state.StateFiles(state)
    try:
        endpoint = server_state.endpoint(files, config.load().server)
        yield Served(endpoint.url, endpoint.context_size, env)
    finally:
        core.stop(files, grace_s=5)


def assert_answered(turn: Turn) -> None:
    """Claude Code finished the turn: an answer (exit 0), or, when the 135M model (sampled at
    temperature 1, as Claude Code asks) ran past the output cap four times, Claude Code's own verdict
    on that (exit 1). Never "Prompt is too long", a server error or a retry loop."""
    assert "Prompt is too long" not in turn.output, turn.output
    if turn.returncode == 0:
        assert turn.stdout.strip(), turn.output
        assert not any(failure in turn.output for failure in FAILURES), turn.output
    else:
        assert turn.returncode == 1 and "output token maximum" in turn.output, turn.output


def test_environment_is_what_claude_code_acts_on(recorder: Recorder, tmp_path: Path) -> None:
    """Against the recorder: the tier name, the key, the output cap, and no probe or other traffic."""
    cap = claude_code.output_cap(8192)
    env = claude_code.environment(recorder.url, "k 'quoted'", "claude-sonnet-5-5", "claude-haiku-5-5", cap)
    for args in (PROMPT_ARGS, ("--continue", *CONTINUE_ARGS)):
        turn = run_claude(env, tmp_path / "home", tmp_path / "work", *args, timeout_s=120)
        assert turn.returncode == 0 and turn.stdout.strip() == "hello", turn.output
    assert [(e.method, e.path) for e in recorder.exchanges] == [("POST", "/v1/messages?beta=true")] * 2
    first, second = recorder.exchanges
    assert first.headers["Authorization"] == "Bearer k 'quoted'"
    assert "x-api-key" not in {name.lower() for name in first.headers}
    assert (first.body["model"], first.body["max_tokens"]) == ("claude-sonnet-5-5", 798)
    *_, answer, follow_up = second.body["messages"]  # the first turn's messages, then these two
    assert (answer["role"], answer["content"][0]["text"]) == ("assistant", "hello")
    assert follow_up["role"] == "user" and CONTINUE_ARGS[1] in json.dumps(follow_up)


def test_print_mode_answers_through_the_environment_server_claude_prints(served: Served, user: User) -> None:
    """`eval "$(inv server.claude --print-only --max-output-tokens 64)"`, then `claude -p`: an answer,
    and no request failed or was retried."""
    asked = ("server.claude", "--print-only", "--max-output-tokens", str(SHORT_CAP))
    printed = inv(served.env, *asked)
    routes = "# main tier claude-sonnet-5-5 → smollm2, haiku tier claude-haiku-5-5 → smollm2"
    assert printed.returncode == 0 and printed.stderr.strip() == routes, printed.stderr  # no warning
    script = f'eval "$({shlex.join([sys.executable, "-m", "invoke", *asked])})"; env -0'
    exported = subprocess.run(
        ["bash", "-c", script], cwd=PROJECT_ROOT, env=served.env, capture_output=True, check=True
    ).stdout.decode()
    env = dict(
        line.split("=", 1) for line in exported.split("\0") if line.startswith(("ANTHROPIC", "CLAUDE"))
    )
    assert env == served.claude_env()
    before = served.messages()
    assert_answered(run_claude(env, user.home, user.work, *PROMPT_ARGS))
    answered = served.added(before)  # one request, or four when the model ran past the cap
    assert set(answered) == {"200"} and answered["200"] in (1, 2, 3, 4), answered


def test_server_claude_launches_claude_code(served: Served, user: User) -> None:
    """Without a terminal, the launched Claude Code reads its prompt from stdin and answers once."""
    user.work.mkdir(parents=True)
    launched = subprocess.run(
        [*core.MANAGE_COMMAND, "server.claude", "--max-output-tokens", str(SHORT_CAP)],
        cwd=user.work,
        env={**served.env, "HOME": str(user.home), "ANTHROPIC_API_KEY": "a-real-key"},
        input="Reply with the single word: hello",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert_answered(Turn(launched.returncode, launched.stdout, launched.stderr))


def prompt_tokens(exchange: Exchange) -> tuple[int, int]:
    """(prompt tokens, of which read from the prefix cache) of one request, as the server reported."""
    usage = exchange.usage()
    return usage["input_tokens"] + usage["cache_read_input_tokens"], usage["cache_read_input_tokens"]


def test_second_turn_reads_the_first_turns_prompt_from_the_cache(served: Served, tmp_path: Path) -> None:
    """Measured per request through a relaying recorder: Claude Code's JSON usage sums a turn's
    requests (it continues a cut answer with more), so it cannot say what the second turn's first
    request found. A HOME and folder of its own make the first turn's prompt new to the server past
    Claude Code's opening lines. The cache is what is measured. Wall times and time to first token
    are printed (-rP), not asserted."""
    home, work = tmp_path / "home", tmp_path / "work"
    with recording(served.url) as proxy:
        env = served.claude_env(proxy.url)
        turns = []
        for args in (PROMPT_ARGS, ("--continue", *CONTINUE_ARGS)):
            proxy.exchanges.clear()
            turn = run_claude(env, home, work, *args, "--output-format", "json")
            assert_answered(turn)
            requests = proxy.posts()
            assert requests and all(r.status == 200 for r in requests), [r.status for r in requests]
            turns.append((turn, requests))
    for name, (turn, requests) in zip(("first", "second"), turns, strict=True):
        result = turn.result()
        print(f"{name} turn:", {k: result.get(k) for k in ("duration_ms", "ttft_ms", "usage")})
        print(f"  (prompt, cached) per request: {[prompt_tokens(r) for r in requests]}")
    first_prompt, first_cached = prompt_tokens(turns[0][1][0])
    second_prompt, second_cached = prompt_tokens(turns[1][1][0])
    assert first_prompt > 2000, "Claude Code's own prompt, not a stand-in"
    assert first_cached < first_prompt / 2, "the first turn's prompt was already cached: nothing to prove"
    assert second_prompt > first_prompt  # the first turn's exchange, then the new question
    assert second_cached >= 0.95 * first_prompt, (first_prompt, second_prompt, second_cached)


def test_prompt_longer_than_the_context_ends_in_claude_codes_own_refusal(
    served: Served, tmp_path: Path
) -> None:
    before = served.messages()
    prompt = "Count these words: " + "homelab " * served.context_size
    turn = run_claude(
        served.claude_env(), tmp_path / "home", tmp_path / "work", "-p", prompt, "--max-turns", "1"
    )
    assert turn.returncode == 1
    assert "Prompt is too long" in turn.output, turn.output
    assert served.added(before) == {"400": 1}  # refused at once, and Claude Code does not ask again


def test_claude_code_here_against_server_start_through_fab(ssh_lab: Lab, tmp_path: Path) -> None:
    """`fab -H a server.start` on the sshd host; its `server.claude --print-only` gives the environment.
    That host's server prefills Claude Code's prompt anew; what is proved is the environment (and the
    flag through fab), not a long answer."""
    lab_yaml = ssh_lab.write_config(tmp_path / "lab.yaml")
    started = cli("fab", lab_yaml, "-H", "a", "server.start", "--api-key", KEY, timeout_s=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        cap = ("--max-output-tokens", str(SHORT_CAP))
        printed = cli("fab", lab_yaml, "-H", "a", "server.claude", "--print-only", *cap)
        assert printed.returncode == 0, printed.stdout + printed.stderr
        exports = [shlex.split(line)[1] for line in printed.stdout.splitlines() if line.startswith("export ")]
        env = dict(item.split("=", 1) for item in exports)
        assert (env["ANTHROPIC_AUTH_TOKEN"], env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"]) == (KEY, str(SHORT_CAP))
        assert_answered(run_claude(env, tmp_path / "home", tmp_path / "work", *PROMPT_ARGS))
    finally:
        cli("fab", lab_yaml, "-H", "a", "server.stop", timeout_s=120)
