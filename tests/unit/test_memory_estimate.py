"""The memory estimate's readers: a GGUF header written here, the bundled GGUF files, an MLX folder."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from inference_server.engines import memory
from inference_server.engines.base import EngineError
from tests.fixtures.server import bundled_file

MiB = 1 << 20


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value: Any) -> tuple[int, bytes]:
    """(GGUF type, encoded value) for the few kinds these tests write."""
    if isinstance(value, bool):
        return 7, struct.pack("<?", value)
    if isinstance(value, int):
        return 4, struct.pack("<I", value)
    if isinstance(value, float):
        return 6, struct.pack("<f", value)
    if isinstance(value, str):
        return 8, _string(value)
    kind, _ = _value(value[0])
    return 9, struct.pack("<IQ", kind, len(value)) + b"".join(_value(v)[1] for v in value)


def write_gguf(path: Path, metadata: dict[str, Any], version: int = 3, tail: bytes = b"\0" * 64) -> Path:
    """A GGUF header as the format defines it: magic, version, tensor count, kv count, typed kvs."""
    body = b"".join(
        _string(key) + struct.pack("<I", _value(v)[0]) + _value(v)[1] for key, v in metadata.items()
    )
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", version, 0, len(metadata)) + body + tail)
    return path


TOY = {
    "general.architecture": "toy",
    "general.name": "Toy ünïcode",
    "toy.block_count": 4,
    "toy.embedding_length": 256,
    "toy.feed_forward_length": 1024,
    "toy.attention.head_count": 8,
    "toy.attention.head_count_kv": [2, 2, 0, 4],  # per layer; a layer with no KV heads has no cache
    "toy.attention.layer_norm_rms_epsilon": 1e-5,
    "toy.use_parallel_residual": True,
    "tokenizer.ggml.tokens": [f"t{i}" for i in range(memory.MAX_KEPT_ARRAY + 10)],
}


def test_the_header_reader_reads_every_kind_of_value(tmp_path: Path) -> None:
    meta = memory.read_gguf_metadata(write_gguf(tmp_path / "toy.gguf", TOY))
    assert meta["general.architecture"] == "toy" and meta["general.name"] == "Toy ünïcode"
    assert meta["toy.attention.head_count_kv"] == [2, 2, 0, 4]
    assert meta["toy.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert meta["toy.use_parallel_residual"] is True
    assert meta["tokenizer.ggml.tokens"] == memory.SkippedArray(8, memory.MAX_KEPT_ARRAY + 10)


def test_kv_cache_counts_each_layers_kv_heads(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "toy.gguf", TOY)
    found = memory.estimate(path, "gguf", context_size=1000, slots=2)
    cells = 1024  # llama.cpp rounds the context up to 256 cells
    head = 256 // 8  # key_length defaults to n_embd / n_head
    assert found.kv_cache == cells * (2 + 2 + 0 + 4) * (head + head) * 2
    assert found.weights == path.stat().st_size
    assert found.total == found.weights + found.kv_cache + found.compute
    vocab = memory.MAX_KEPT_ARRAY + 10
    activations = 512 * (256 + 1024) * 4 * memory.COMPUTE_ACTIVATION_COPIES
    assert found.compute == memory.COMPUTE_BASE + vocab * (memory.COMPUTE_PER_VOCAB_TOKEN + 8) + activations


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"GGML" + b"\0" * 60, "no GGUF magic"),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "GGUF version 1 is not supported"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 99) + b"short", "ends inside a string"),
        (b"", "cannot mmap an empty file"),
    ],
)
def test_an_unreadable_file_is_one_engine_error_line(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(EngineError) as caught:
        memory.estimate(path, "gguf", 2048, 1)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"cannot read GGUF metadata from {path}")
    assert reason in message


def test_metadata_that_cannot_size_a_model_is_one_engine_error_line(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "odd.gguf", {**TOY, "toy.attention.head_count_kv": "two"})
    with pytest.raises(EngineError, match=r"^odd.gguf: unusable GGUF metadata for a memory estimate"):
        memory.estimate(path, "gguf", 2048, 1)
    path = write_gguf(tmp_path / "bare.gguf", {"general.architecture": "toy"})
    with pytest.raises(EngineError, match="lacks architecture, block_count or embedding_length"):
        memory.estimate(path, "gguf", 2048, 1)


def test_a_missing_file_is_one_engine_error_line(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=r"^cannot read GGUF metadata from .*nope.gguf: No such file"):
        memory.estimate(tmp_path / "nope.gguf", "gguf", 2048, 1)


# What llama.cpp 0.3.36 itself logged creating our engine's context ("llama_kv_cache: size = ... MiB"),
# unified cache, f16 K/V: SmolLM2 (30 layers, 3 KV heads of 64) and Gemma 3 (18 layers, 15 of them
# sliding-window, which get the full cache too: swa_full; 1 KV head of 256).
LLAMA_CPP_KV_MIB = {
    ("smollm2", 2048): 45.0,
    ("smollm2", 8192): 180.0,
    ("gemma3", 2048): 36.0,
    ("gemma3", 8192): 144.0,
}


@pytest.mark.parametrize(("name", "context"), sorted(LLAMA_CPP_KV_MIB))
def test_kv_cache_of_the_bundled_models_is_what_llama_cpp_allocates(name: str, context: int) -> None:
    for slots in (1, 4):  # one unified cache: the slots share it
        found = memory.estimate(bundled_file(name), "gguf", context, slots)
        assert found.kv_cache == LLAMA_CPP_KV_MIB[(name, context)] * MiB


def test_an_mlx_folder_is_sized_from_its_config_and_safetensors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 30,
                "num_attention_heads": 9,
                "num_key_value_heads": 3,
                "hidden_size": 576,
                "vocab_size": 49152,
            }
        )
    )
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 234)
    (tmp_path / "tokenizer.json").write_bytes(b"\0" * 5000)  # not weights
    found = memory.estimate(tmp_path, "mlx", context_size=2048, slots=4)
    assert found.weights == 1234
    assert found.kv_cache == 30 * 2048 * 2 * 3 * 64 * 2  # the same 45 MiB llama.cpp gives SmolLM2
    assert found.compute == memory.MLX_COMPUTE_BASE + 49152 * 4 * 4
    head_dim = json.loads((tmp_path / "config.json").read_text()) | {"head_dim": 128}
    (tmp_path / "config.json").write_text(json.dumps(head_dim))
    assert memory.estimate(tmp_path, "safetensors", 2048, 1).kv_cache == 30 * 2048 * 2 * 3 * 128 * 2


def test_an_mlx_folder_without_layer_counts_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 576}))
    (tmp_path / "model.safetensors").write_bytes(b"\0")
    with pytest.raises(EngineError, match=r"config.json lacks a usable 'num_hidden_layers'"):
        memory.estimate(tmp_path, "mlx", 2048, 1)
    with pytest.raises(EngineError, match=r"cannot read the model config in"):
        memory.estimate(tmp_path / "absent", "mlx", 2048, 1)


def test_the_default_budget_is_a_share_of_ram_and_rss_is_measured() -> None:
    import psutil

    total = psutil.virtual_memory().total
    assert total // 2 < memory.default_budget_bytes() < total
    assert 10 * MiB < memory.resident_bytes() < total
