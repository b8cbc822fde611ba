"""tasks.core.claude_code: the environment server.claude gives Claude Code, and when it warns."""

from __future__ import annotations

import subprocess

import pytest

from tasks.core import claude_code
from tasks.core.errors import HomelabError


def test_every_tier_maps_onto_served_names_and_the_answer_fits_the_context() -> None:
    env = claude_code.environment("http://127.0.0.1:8080", "", "claude-sonnet-5-5", "claude-haiku-5-5", 798)
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8080"
    assert env["ANTHROPIC_AUTH_TOKEN"] == "no-key-needed"  # Claude Code wants some credential
    big = (
        "ANTHROPIC_MODEL",
        "ANTHROPIC_DEFAULT_OPUS_MODEL",
        "ANTHROPIC_DEFAULT_SONNET_MODEL",
        "ANTHROPIC_DEFAULT_FABLE_MODEL",
    )
    assert {env[name] for name in big} == {"claude-sonnet-5-5"}
    assert {env["ANTHROPIC_DEFAULT_HAIKU_MODEL"], env["ANTHROPIC_SMALL_FAST_MODEL"]} == {"claude-haiku-5-5"}
    assert env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "798"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"


def test_output_cap_leaves_room_for_the_prompt_and_four_answers_at_most_4096() -> None:
    assert [claude_code.output_cap(n) for n in (2048, 8192, 16384, 131072)] == [256, 798, 2846, 4096]


def test_a_lower_cap_can_be_asked_for_and_a_higher_one_is_refused_in_one_line() -> None:
    assert [claude_code.chosen_cap(8192, asked) for asked in (0, 1, 64, 798)] == [798, 1, 64, 798]
    for asked in (799, -1):
        with pytest.raises(HomelabError) as refused:
            claude_code.chosen_cap(8192, asked)
        assert refused.value.message == (
            f"--max-output-tokens {asked}: Claude Code's answers can have 1 to 798 tokens beside its prompt"
            " in a 8,192-token context — ask for 798 or less, or serve a larger context"
            " (inv server.restart --context-size N)"
        )


def test_warning_only_where_claude_codes_prompt_and_answer_do_not_fit() -> None:
    assert claude_code.context_warning("smollm2", 8192) == ""
    warning = claude_code.context_warning("smollm2", 4096)
    assert warning.startswith("smollm2 is served with 4,096 tokens of context")
    assert "serve a model with a larger context" in warning and "\n" not in warning


def test_shell_lines_set_the_environment_exactly_when_evaluated() -> None:
    env = claude_code.environment("http://h:1", "k $(x) 'q' \"d\"", "m", "s", 256)
    script = "\n".join(claude_code.shell_lines(env)) + "\nenv -0"
    done = subprocess.run(
        ["bash", "-c", script],
        env={"ANTHROPIC_API_KEY": "real", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    seen = dict(
        item.split("=", 1)
        for item in done.stdout.decode().split("\0")
        if item.startswith(("ANTHROPIC", "CLAUDE"))
    )
    assert seen == env  # the key's quotes and $(...) arrive as written; ANTHROPIC_API_KEY is gone
