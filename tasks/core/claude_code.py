"""Claude Code against this server: where its program is, and the environment that fits it to the
served model (the names Claude Code 2.1.330 reads; tests/fixtures/claude_code/ holds what it sends)."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from tasks.core.config import PROJECT_ROOT
from tasks.core.errors import HomelabError

LOCAL_PROGRAM = PROJECT_ROOT / ".tools" / "claude-code" / "node_modules" / ".bin" / "claude"
# Claude Code's first print-mode request: 4,154 tokens on smollm2 with a claude-*-5-5 model name
# (4,818 for claude-haiku-5-5, 9,017 for claude-sonnet-4-6, whose older prompt is twice as long), plus
# room for a CLAUDE.md, a longer path and a second turn.
FIRST_PROMPT_TOKENS = 5_000
MAX_OUTPUT_TOKENS = 4_096  # print mode asks for 128,000; a small model that loops is stopped sooner
UNSET = ("ANTHROPIC_API_KEY",)  # a real Anthropic key in the caller's shell never reaches this server


def program() -> Path | None:
    """The pinned copy bootstrap.sh --dev installs, else a `claude` on PATH."""
    if os.access(LOCAL_PROGRAM, os.X_OK):
        return LOCAL_PROGRAM
    found = shutil.which("claude")
    return Path(found) if found else None


def output_cap(context_size: int) -> int:
    """CLAUDE_CODE_MAX_OUTPUT_TOKENS: a quarter of what the context leaves after Claude Code's first
    prompt, at most 4,096. An answer cut at the cap makes print mode ask to continue three more times,
    each request carrying what came before, then fail with "API Error: Claude's response exceeded the
    N output token maximum": so four caps must fit beside the prompt (a quarter of the context did not:
    the continuation was refused as too long), and a model that loops costs four caps of decoding."""
    return min(MAX_OUTPUT_TOKENS, max(256, (context_size - FIRST_PROMPT_TOKENS) // 4))


def chosen_cap(context_size: int, asked: int) -> int:
    """The answer cap: output_cap, or a lower one asked for (a shorter wait when a small model runs on);
    a higher one would not fit four answers beside the prompt, so it is refused."""
    fits = output_cap(context_size)
    if asked == 0:
        return fits
    if 0 < asked <= fits:
        return asked
    raise HomelabError(
        f"--max-output-tokens {asked}: Claude Code's answers can have 1 to {fits} tokens beside its prompt"
        f" in a {context_size:,}-token context",
        f"ask for {fits} or less, or serve a larger context (inv server.restart --context-size N)",
    )


def environment(
    base_url: str, api_key: str, model: str, small_fast_model: str, max_output_tokens: int
) -> dict[str, str]:
    """Every model tier onto served names, the key as a variable (never an argument), a bounded answer,
    and no traffic beyond the server (no update checks, telemetry or /api/hello probe)."""
    return {
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_AUTH_TOKEN": api_key or "no-key-needed",
        "ANTHROPIC_MODEL": model,
        "ANTHROPIC_DEFAULT_FABLE_MODEL": model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
        "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": small_fast_model,
        "ANTHROPIC_SMALL_FAST_MODEL": small_fast_model,
        "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(max_output_tokens),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def context_warning(model_name: str, context_size: int) -> str:
    """'' when Claude Code's requests fit the context, else why not and the fix."""
    needed = FIRST_PROMPT_TOKENS + output_cap(context_size)
    if context_size >= needed:
        return ""
    return (
        f"{model_name} is served with {context_size:,} tokens of context, and Claude Code needs about"
        f" {needed:,} (its prompt plus the answer): serve a model with a larger context"
        " (inv server.restart --model NAME --context-size N); fewer slots do not help"
    )


def shell_lines(env: dict[str, str]) -> list[str]:
    """POSIX shell lines that set `env`: `eval "$(inv server.claude --print-only)"` applies them."""
    return [f"unset {name}" for name in UNSET] + [f"export {k}={shlex.quote(v)}" for k, v in env.items()]


def launch(claude: Path, env: dict[str, str]) -> None:
    """Replace this process with Claude Code, interactive, in the caller's terminal and directory."""
    inherited = {k: v for k, v in os.environ.items() if k not in UNSET}
    os.execve(claude, [str(claude)], {**inherited, **env})
