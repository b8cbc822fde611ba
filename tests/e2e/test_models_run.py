"""`inv models.run`: the bundled SmolLM2 loaded in the task's own process, no server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GREEDY = ["--temperature", "0", "--max-tokens", "8"]


def inv(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_the_streamed_answer_is_the_one_json_reports_with_its_speed() -> None:
    as_json = inv("models.run", "smollm2", "Name a colour.", *GREEDY, "--json")
    streamed = inv("models.run", "smollm2", "Name a colour.", *GREEDY)

    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)["rows"][0]
    assert (answer["model"], answer["engine"], answer["finish_reason"]) == ("smollm2", "llama_cpp", "length")
    assert answer["completion_tokens"] == 8 and answer["prompt_tokens"] > 0
    assert answer["tokens_per_s"] > 0 and answer["text"].strip()
    assert streamed.returncode == 0, streamed.stderr
    text, stats = streamed.stdout.rsplit("\n", 2)[:2]
    assert text == answer["text"]  # greedy: the same answer, streamed as it came
    assert stats.startswith("8 tokens at ") and " tokens/s (load " in stats


def test_a_model_that_is_not_in_the_catalog_is_one_line() -> None:
    done = inv("models.run", "no-such-model", "hi")

    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and "no-such-model" in done.stderr


def test_the_servers_pins_and_aliases_do_not_stop_a_run(tmp_path: Path) -> None:
    overlay = tmp_path / "server.yaml"
    overlay.write_text('server: {pinned: [gemma3], model_aliases: {"claude-haiku-*": gemma3}}\n')

    done = inv("-f", str(overlay), "models.run", "smollm2", "Hi", *GREEDY, "--json")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"][0]["model"] == "smollm2"
