"""How much memory a model takes once an engine has loaded it: weights, KV cache, compute buffers.

The model pool checks an estimate against its budget before loading, and `inv models.fit` prints
one. Nothing here loads a model: GGUF metadata is read from the file's header (a small reader below,
no dependency), an MLX or safetensors directory is read from its config.json.

What llama.cpp allocates for our engine (llama_cpp_engine._Worker: n_ctx = context, n_seq_max =
slots, one unified KV cache, n_ubatch 512, f16 K/V, flash attention AUTO, llama.cpp's default
swa_full = true):
- weights: the file, mmap'd; the warm-up decode touches every page of the tensors it uses, and the
  tied or separate output matrix makes that all of them.
- KV cache: per layer, n_ctx cells × (n_head_kv × key_length + n_head_kv × value_length) × 2 bytes,
  zeroed at creation (so resident at once). Sliding-window layers are no smaller here:
  llama-kv-cache-iswa.cpp sizes the SWA cache as
      size_swa = GGML_PAD(min(size_base, n_swa*(unified ? n_seq_max : 1) + n_ubatch), 256);
      if (swa_full) { ... size_swa = size_base; }
  and llama_context_default_params() has swa_full = true, which the engine keeps (a window-sized
  cache cannot give back a prefix longer than the window, and the engine reuses prefixes).
- compute: llama.cpp reserves a compute buffer for a whole micro-batch of logits (n_vocab × n_ubatch
  × 4 bytes: 514 MiB for Gemma 3's 262k vocabulary) but a request asks for one output per sequence,
  so only a sliver of it is ever touched; what is resident is calibrated instead (see COMPUTE_*):
  the vocabulary's tables, one row of logits per slot (the output buffer), a micro-batch of
  activations, and a fixed base (thread pools, the engine's own tables).
Not counted: the engine's prefix store, which fills over time up to its prefix_cache_bytes.
"""

from __future__ import annotations

import json
import mmap
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference_server.engines.base import EngineError

MiB = 1 << 20
GiB = 1 << 30
KV_BYTES = 2  # f16 K and V: llama.cpp's default cache type, and MLX's float16 caches
MICRO_BATCH_TOKENS = 512  # llama_cpp_engine's n_ubatch
CONTEXT_PAD = 256  # llama.cpp rounds the context up to this many cells
# Calibrated on our engine with SmolLM2 135M (49k vocabulary) and Gemma 3 270M (262k) at contexts 2048
# and 8192, 1 and 4 slots: the RSS above weights + KV is 19-46 MiB after the load and 37-77 MiB once a
# 2,000-token prompt has gone through; these put the estimate between the two (within 6% of each).
COMPUTE_BASE = 14 * MiB  # OpenMP threads, malloc arenas, ggml's graph and context metadata
COMPUTE_PER_VOCAB_TOKEN = 120  # llama.cpp's token tables and the engine's per-token lookups
COMPUTE_ACTIVATION_COPIES = 2  # a micro-batch's activations: tokens × (n_embd + n_ff) × 4 B, twice
MLX_COMPUTE_BASE = 64 * MiB  # MLX allocates lazily and keeps a buffer cache; a rough figure


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int  # bytes
    kv_cache: int  # bytes, for context_size tokens shared by `slots` sequences (one unified cache)
    compute: int  # bytes: compute + output buffers

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute


def estimate(path: Path, model_format: str, context_size: int, slots: int) -> MemoryEstimate:
    """What loading `path` with this context and these slots will take; EngineError when unreadable.

    model_format: "gguf" (a file) | "mlx" | "safetensors" (a directory with config.json)."""
    if model_format == "gguf":
        return _gguf_estimate(path, context_size, slots)
    if model_format in ("mlx", "safetensors"):
        return _directory_estimate(path, context_size, slots)
    raise EngineError(f"no memory estimate for model format '{model_format}'")


def default_budget_bytes() -> int:
    """A safe share of this host's RAM for models: three quarters, leaving the rest for the OS, the
    page cache and the owner's other work. On a Mac the GPU may wire only part of unified memory
    (macOS's default iogpu.wired_limit: two thirds up to 36 GB, three quarters above), so there the
    share is that limit."""
    import psutil

    total = int(psutil.virtual_memory().total)
    if sys.platform == "darwin" and total <= 36 * GiB:
        return total * 2 // 3
    return total * 3 // 4


def resident_bytes() -> int:
    """This process's resident set size now, for measuring what a load really took."""
    import psutil

    return int(psutil.Process().memory_info().rss)


# --- GGUF ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SkippedArray:
    """An array too long to be a per-layer setting (the vocabulary): only its length is kept."""

    type: int
    count: int


MAX_KEPT_ARRAY = 4096  # per-layer arrays are a few hundred long at most; vocabularies are 32k+
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_LENGTH = struct.Struct("<Q")


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/values of a GGUF v2/v3 header (the tensor infos after them are not read).

    Arrays longer than MAX_KEPT_ARRAY become SkippedArray; strings are decoded as UTF-8."""
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _GGUFReader(data).metadata()
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        raise EngineError(f"cannot read GGUF metadata from {path}: {reason}") from None


class _GGUFReader:
    def __init__(self, data: Any) -> None:
        self.data = data
        self.at = 0

    def metadata(self) -> dict[str, Any]:
        if self.data[:4] != b"GGUF":
            raise ValueError("not a GGUF file (no GGUF magic)")
        self.at = 4
        version = self._unpack("I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
        self._unpack("Q")  # tensor count
        kv_count = self._unpack("Q")
        found = {}
        for _ in range(kv_count):
            key = self._string()
            found[key] = self._value(self._unpack("I"))
        return found

    def _unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        size = self._unpack("Q")
        text = bytes(self.data[self.at : self.at + size])
        if len(text) != size:
            raise ValueError("the header ends inside a string")
        self.at += size
        return text.decode()

    def _value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self._unpack(_SCALARS[kind])
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            item, count = self._unpack("I"), self._unpack("Q")
            if count <= MAX_KEPT_ARRAY:
                return [self._value(item) for _ in range(count)]
            self._skip(item, count)
            return SkippedArray(item, count)
        raise ValueError(f"unknown GGUF value type {kind}")

    def _skip(self, item: int, count: int) -> None:
        if item in _SCALARS:
            self.at += count * struct.calcsize(_SCALARS[item])
        elif item == _STRING:  # a vocabulary: hundreds of thousands of length-prefixed strings
            data, at, length = self.data, self.at, _LENGTH.unpack_from
            for _ in range(count):
                at += 8 + length(data, at)[0]
            self.at = at
        else:
            for _ in range(count):
                self._value(item)
        if self.at > len(self.data):
            raise ValueError("the header ends inside an array")


def _per_layer(value: Any, layers: int) -> list[int]:
    """A hyperparameter that is one number for every layer, or an array with one per layer."""
    if isinstance(value, list) and value:
        return [int(v) for v in value[:layers]] + [int(value[-1])] * max(0, layers - len(value))
    return [int(value)] * layers


def _gguf_estimate(path: Path, context_size: int, slots: int) -> MemoryEstimate:
    meta = read_gguf_metadata(path)
    try:
        return _gguf_sizes(path, meta, context_size, slots)
    except (TypeError, ValueError) as exc:
        raise EngineError(f"{path.name}: unusable GGUF metadata for a memory estimate ({exc})") from None


def _gguf_sizes(path: Path, meta: dict[str, Any], context_size: int, slots: int) -> MemoryEstimate:
    arch = meta.get("general.architecture")
    layers = meta.get(f"{arch}.block_count")
    n_embd = meta.get(f"{arch}.embedding_length")
    if not isinstance(arch, str) or not isinstance(layers, int) or not isinstance(n_embd, int):
        raise EngineError(f"{path.name}: the GGUF header lacks architecture, block_count or embedding_length")
    heads = _per_layer(meta.get(f"{arch}.attention.head_count", 1), layers)
    kv_heads = _per_layer(meta.get(f"{arch}.attention.head_count_kv", heads), layers)
    head_k = int(meta.get(f"{arch}.attention.key_length") or n_embd // max(heads[0], 1))
    head_v = int(meta.get(f"{arch}.attention.value_length") or head_k)
    n_ff = max(_per_layer(meta.get(f"{arch}.feed_forward_length", 4 * n_embd), layers))
    cells = -(-max(context_size, 1) // CONTEXT_PAD) * CONTEXT_PAD
    kv_cache = sum(cells * n * (head_k + head_v) * KV_BYTES for n in kv_heads)
    vocab = _vocab_size(meta, arch)
    activations = MICRO_BATCH_TOKENS * (n_embd + n_ff) * 4 * COMPUTE_ACTIVATION_COPIES
    compute = COMPUTE_BASE + vocab * (COMPUTE_PER_VOCAB_TOKEN + 4 * slots) + activations
    return MemoryEstimate(weights=path.stat().st_size, kv_cache=kv_cache, compute=compute)


def _vocab_size(meta: dict[str, Any], arch: str) -> int:
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, SkippedArray):
        return tokens.count
    if isinstance(tokens, list):
        return len(tokens)
    return int(meta.get(f"{arch}.vocab_size") or 0)


# --- MLX and safetensors directories --------------------------------------------------------------


def _directory_estimate(folder: Path, context_size: int, slots: int) -> MemoryEstimate:
    try:
        config = json.loads((folder / "config.json").read_text())
        weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read the model config in {folder}: {exc}") from None
    config = {**config.get("text_config", {}), **config}
    try:
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise EngineError(f"{folder}/config.json lacks a usable {exc} for the memory estimate") from None
    if weights == 0:
        raise EngineError(f"{folder} holds no *.safetensors weights")
    kv_cache = layers * context_size * 2 * kv_heads * head_dim * KV_BYTES
    compute = MLX_COMPUTE_BASE + int(config.get("vocab_size") or 0) * 4 * slots
    return MemoryEstimate(weights=weights, kv_cache=kv_cache, compute=compute)
