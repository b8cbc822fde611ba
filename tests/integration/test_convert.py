"""models.convert on the bundled SmolLM2 GGUF, checked against llama.cpp running the same file."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasks.core.convert import MARKER, convert_gguf
from tasks.core.errors import HomelabError

ROOT = Path(__file__).resolve().parents[2]
HEADS, KV_HEADS = 9, 3  # SmolLM2-135M


@pytest.fixture(scope="module")
def llama_cpp(mlx_source_gguf: Path) -> Iterator[Any]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(mlx_source_gguf), n_ctx=512, n_threads=1, logits_all=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def mlx_lm_model(mlx_smollm2_dir: Path) -> tuple[Any, Any]:
    from mlx_lm import load

    return load(str(mlx_smollm2_dir))


def chat_ids(tokenizer: Any, question: str) -> list[int]:
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer.encode(prompt))


def mlx_logits(model: Any, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def llama_cpp_logits(llm: Any, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def agreement(ours: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(share of positions with the same top token, mean per-position correlation of the logits)."""
    same_top = float((ours.argmax(-1) == reference.argmax(-1)).mean())
    correlation = float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ours, reference, strict=True)]))
    return same_top, correlation


SEA = (
    "<|im_start|>user\nWrite one sentence about the sea.<|im_end|>\n<|im_start|>assistant\n"
    "The sea is a vast body of salt water that covers most of the Earth's surface."
)


def test_converted_directory_is_an_mlx_lm_model(mlx_smollm2_dir: Path, mlx_lm_model: tuple[Any, Any]) -> None:
    assert sorted(p.name for p in mlx_smollm2_dir.iterdir()) == [
        "config.json",
        "homelab-conversion.json",  # marks it as ours, for --force
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((mlx_smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (HEADS, KV_HEADS)
    assert config["tie_word_embeddings"] is True
    # Q4_1 layers stay 4-bit, the Q8_0 embedding stays 8-bit: the GGUF's bytes, not a requantisation.
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "model.embed_tokens": {"group_size": 32, "bits": 8},
    }
    model, tokenizer = mlx_lm_model
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "QuantizedLinear"
    assert tokenizer.eos_token == "<|im_end|>"
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )


@pytest.mark.parametrize(
    "text",
    [
        "Hello world, it's 2024!",
        "  two leading spaces\n\nand\ttabs   ",
        "naïve café, 中文, emoji 🙂",
        "<|im_start|>user\nhi<|im_end|>",
    ],
)
def test_rebuilt_tokenizer_matches_llama_cpp(
    mlx_lm_model: tuple[Any, Any], llama_cpp: Any, text: str
) -> None:
    _, tokenizer = mlx_lm_model
    assert tokenizer.encode(text) == llama_cpp.tokenize(text.encode(), add_bos=False, special=True)
    assert tokenizer.decode(tokenizer.encode(text)) == text


@pytest.mark.slow
def test_logits_agree_with_llama_cpp_on_the_same_gguf(mlx_lm_model: tuple[Any, Any], llama_cpp: Any) -> None:
    """llama.cpp rounds activations to 8 bits for Q4_1 products, so logits differ slightly (measured:
    97% same top token, correlation 0.9994); rope applied to the wrong row pairs gives 53% and 0.82."""
    model, tokenizer = mlx_lm_model
    ids = list(tokenizer.encode(SEA))
    same_top, correlation = agreement(mlx_logits(model, ids), llama_cpp_logits(llama_cpp, ids))
    assert same_top >= 0.9
    assert correlation >= 0.99


@pytest.mark.slow
@pytest.mark.parametrize("question", ["What is 2+2?", "Name three colours."])
def test_greedy_tokens_match_llama_cpp(mlx_lm_model: tuple[Any, Any], llama_cpp: Any, question: str) -> None:
    """Exact on these prompts (measured); on near ties llama.cpp's 8-bit activations may pick the other."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = mlx_lm_model
    ids = chat_ids(tokenizer, question)
    ours = [int(t) for t, _ in generate_step(mx.array(ids), model, max_tokens=8, sampler=make_sampler(0.0))]
    llama_cpp.reset()
    reference = []
    for token in llama_cpp.generate(ids, temp=0.0, top_k=1):
        reference.append(token)
        if len(reference) == len(ours):
            break
    assert ours == reference


@pytest.mark.slow
def test_qk_rows_left_in_llama_cpp_order_are_detected(mlx_smollm2_dir: Path, llama_cpp: Any) -> None:
    """The check above has teeth: put llama.cpp's Q/K row permutation back and agreement collapses."""
    from mlx_lm import load

    model, tokenizer = load(str(mlx_smollm2_dir))

    def llama_cpp_order(rows: Any, heads: int) -> Any:  # convert_hf_to_gguf's permute
        n = rows.shape[0]
        return rows.reshape(heads, 2, n // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)

    for layer in model.model.layers:
        for proj, heads in ((layer.self_attn.q_proj, HEADS), (layer.self_attn.k_proj, KV_HEADS)):
            for part in ("weight", "scales", "biases"):
                setattr(proj, part, llama_cpp_order(getattr(proj, part), heads))
    ids = list(tokenizer.encode(SEA))
    same_top, correlation = agreement(mlx_logits(model, ids), llama_cpp_logits(llama_cpp, ids))
    assert same_top < 0.8
    assert correlation < 0.95


def test_existing_output_is_kept_unless_forced(tmp_path: Path, mlx_source_gguf: Path) -> None:
    output = convert_gguf(mlx_source_gguf, tmp_path / "model").output
    with pytest.raises(HomelabError, match="already exists — pass --force"):
        convert_gguf(mlx_source_gguf, output)

    (output / "config.json").write_text("{}")
    convert_gguf(mlx_source_gguf, output, force=True)
    assert json.loads((output / "config.json").read_text())  # the earlier conversion was replaced
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging or old copy left behind


@pytest.mark.parametrize("kind", ["no marker", "marker and a file of its own", "symlink to a conversion"])
def test_force_refuses_to_delete_a_directory_that_is_not_an_earlier_conversion(
    tmp_path: Path, mlx_source_gguf: Path, kind: str
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")  # e.g. a model someone downloaded
    if kind != "no marker":
        (mine / MARKER).write_text("{}")
    if kind != "symlink to a conversion":
        (mine / "notes.txt").write_text("keep")
    output = mine
    if kind == "symlink to a conversion":
        output = tmp_path / "link"
        output.symlink_to(mine)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(HomelabError, match=r"is not an earlier models.convert output .* — remove it"):
        convert_gguf(mlx_source_gguf, output, force=True)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def write_gguf(path: Path, architecture: str) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def run_convert(
    *args: str, max_file_bytes: int = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`inv models.convert ARGS` in a child process, whose files may be capped at max_file_bytes."""

    def cap_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "models.convert", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=cap_file_size if max_file_bytes else None,
        env={**os.environ, **(env or {})},
    )


def test_catalog_name_converts_into_the_configured_directory(tmp_path: Path) -> None:
    result = run_convert("smollm2", env={"INVOKE_MODELS_CONVERTED_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    output = tmp_path / "smollm2"
    assert " ".join(result.stdout.split()).startswith(
        f"converted SmolLM2-135M-Instruct.Q4_1.gguf -> {output} ("
    )
    assert (output / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]


def test_safetensors_catalog_entry_is_refused_in_one_line() -> None:
    result = run_convert("gpt2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: gpt2 is a safetensors model; models.convert reads GGUF files "
        "— pick a GGUF entry (`inv models.catalog`)"
    ]


def test_non_llama_gguf_is_refused_in_one_line(tmp_path: Path) -> None:
    gguf = write_gguf(tmp_path / "tiny-qwen2.gguf", "qwen2")
    result = run_convert(str(gguf), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: architecture 'qwen2' is not supported by models.convert (llama only) "
        "— use the model's MLX repo from mlx-community instead"
    ]
    assert not (tmp_path / "out").exists()


def test_file_that_is_not_gguf_is_refused_in_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model")
    result = run_convert(str(fake), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {fake}: not a readable GGUF file")


def test_missing_file_is_refused_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    result = run_convert(str(missing), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {missing}: no such file — check the path"]


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path, mlx_source_gguf: Path) -> None:
    """The disk fills up halfway through the weights (a file size cap stands in for a full disk)."""
    out = tmp_path / "models" / "smollm2"
    result = run_convert(str(mlx_source_gguf), "--output", str(out), max_file_bytes=10_000_000)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write {out} (")
    assert line.endswith("— check free space and permissions")
    assert list(out.parent.iterdir()) == []
