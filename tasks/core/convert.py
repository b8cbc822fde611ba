"""A llama-architecture GGUF rewritten as an MLX model directory that mlx-lm loads.

`mx.load` reads GGUF Q4_0/Q4_1/Q8_0 tensors straight into MLX's affine quantized layout (packed
uint32 weights plus float16 scales and biases, groups of 32), so the weights keep their bytes: no
dequantising, no second quantisation error. Other tensor types arrive as float16 and stay float.
Three things still need work: tensor names (llama.cpp's -> Hugging Face's), the Q/K row order
(convert_hf_to_gguf permutes those rows for llama.cpp's rope; left as is, mlx-lm's rope rotates the
wrong pairs and the model degrades without any error), and the tokenizer, which a GGUF keeps only as
metadata and which is rebuilt here with `tokenizers`.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tasks.core.catalog import describe_size, get_entry, load_catalog
from tasks.core.config import ModelsSettings
from tasks.core.errors import HomelabError

GGUF_GROUP_SIZE = 32  # every GGUF block format mx.load keeps quantized uses blocks of 32

# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), applied one after the other, by the GGUF's
# tokenizer.ggml.pre. Only the ones seen on llama-architecture byte-level vocabularies are listed.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS: dict[str, tuple[str, ...]] = {
    "gpt2": (_GPT2_SPLIT,),
    "smollm": (r"\p{N}", _GPT2_SPLIT),
    "llama-bpe": (_LLAMA3_SPLIT,),
    "llama3": (_LLAMA3_SPLIT,),
}

_TENSOR_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_TENSOR_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_CONTROL_TOKEN, _USER_DEFINED_TOKEN = 3, 4  # llama.cpp's token types

MARKER = "homelab-conversion.json"  # marks a directory --force may replace: one this module wrote
OUTPUT_FILES = {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", MARKER}


@dataclass(frozen=True)
class ConvertResult:
    output: Path
    tensors: int
    layout: str  # e.g. "4-bit: 210, 8-bit: 1, float: 61"
    size_bytes: int


def default_output(name: str, settings: ModelsSettings) -> Path:
    """Where `models.convert NAME` puts its result, and so where an MLX engine finds it."""
    return settings.converted_dir / Path(name).stem


def find_source(name: str, settings: ModelsSettings) -> Path:
    """The GGUF to convert: a path to a .gguf file, or a catalog entry's file on this machine."""
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise HomelabError(f"{path}: no such file", "check the path")
        return path
    entry = get_entry(load_catalog(settings.catalog), name)
    if entry.format != "gguf":
        raise HomelabError(
            f"{entry.name} is a {entry.format} model; models.convert reads GGUF files",
            "pick a GGUF entry (`inv models.catalog`)",
        )
    from tasks.core.store import installed_file

    if (installed := installed_file(entry, settings)) is not None:
        return installed
    raise HomelabError(f"{entry.name} is not downloaded", f"run `inv models.download {entry.name}` first")


def convert_gguf(gguf: Path, output: Path, *, force: bool = False) -> ConvertResult:
    """Write the MLX directory for `gguf` at `output`, whole or not at all."""
    _check_replaceable(output, force)
    import mlx.core as mx

    from tasks.core.console import console

    with console().status(f"reading {gguf.name}"):
        try:
            loaded = mx.load(str(gguf), return_metadata=True)
        except (RuntimeError, ValueError, OSError) as exc:
            raise HomelabError(f"{gguf}: not a readable GGUF file ({exc})", "check the file") from None
    tensors, metadata = cast(tuple[dict[str, Any], dict[str, Any]], loaded)
    meta = _Metadata(metadata, gguf)
    config = _model_config(meta, tensors)
    tokenizer = _build_tokenizer(meta)
    weights = _mlx_weights(tensors, config)
    if quantization := _quantization(weights):
        config.update(quantization=quantization, quantization_config=quantization)

    output.parent.mkdir(parents=True, exist_ok=True)
    _check_free_space(output.parent, sum(w.nbytes for w in weights.values()))
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        with console().status(f"writing {len(weights)} tensors"):
            mx.save_safetensors(str(staging / "model.safetensors"), weights, metadata={"format": "mlx"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tokenizer.save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(meta), indent=2) + "\n")
        (staging / MARKER).write_text(json.dumps({"converted_from": gguf.name}) + "\n")
        _replace(output, staging)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError | RuntimeError):  # mlx reports a failed write as RuntimeError
            raise HomelabError(f"cannot write {output} ({exc})", "check free space and permissions") from None
        raise
    size = sum(f.stat().st_size for f in output.iterdir())
    return ConvertResult(output, len(weights), _describe_layout(weights), size)


class _Metadata:
    """GGUF key/value metadata as plain Python values, with one-line errors for what is missing."""

    def __init__(self, raw: dict[str, Any], source: Path) -> None:
        self._raw = raw
        self._source = source
        self.arch = str(raw.get("general.architecture", "?"))

    def get(self, key: str, default: Any = None) -> Any:
        value = self._raw.get(key.replace("{arch}", self.arch), default)
        return value.tolist() if hasattr(value, "tolist") else value

    def need(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise HomelabError(
                f"{self._source.name}: metadata key '{key.replace('{arch}', self.arch)}' is missing",
                "the file is incomplete; re-download or re-export it",
            )
        return value


def _model_config(meta: _Metadata, tensors: dict[str, Any]) -> dict[str, Any]:
    if meta.arch != "llama":
        raise HomelabError(
            f"architecture '{meta.arch}' is not supported by models.convert (llama only)",
            "use the model's MLX repo from mlx-community instead",
        )
    if "rope_freqs.weight" in tensors or meta.get("{arch}.rope.scaling.type", "none") != "none":
        raise HomelabError(
            "this GGUF uses rope scaling, which models.convert does not carry over",
            "use the model's MLX repo from mlx-community instead",
        )
    heads = int(meta.need("{arch}.attention.head_count"))
    hidden = int(meta.need("{arch}.embedding_length"))
    tokens = meta.need("tokenizer.ggml.tokens")
    eos, eot = meta.need("tokenizer.ggml.eos_token_id"), meta.get("tokenizer.ggml.eot_token_id")
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "intermediate_size": int(meta.need("{arch}.feed_forward_length")),
        "num_hidden_layers": int(meta.need("{arch}.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get("{arch}.attention.head_count_kv", heads)),
        "head_dim": int(meta.get("{arch}.attention.key_length", hidden // heads)),
        "rms_norm_eps": float(meta.need("{arch}.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get("{arch}.rope.freq_base", 10000.0)),
        "vocab_size": int(meta.get("{arch}.vocab_size", len(tokens))),
        "max_position_embeddings": int(meta.need("{arch}.context_length")),
        "tie_word_embeddings": "output.weight" not in tensors,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": [eos, eot] if eot not in (None, eos) else eos,
    }


def _hf_name(gguf_name: str) -> str:
    """'blk.3.attn_q.scales' -> 'model.layers.3.self_attn.q_proj.scales'."""
    stem, _, suffix = gguf_name.rpartition(".")
    if stem in _TENSOR_NAMES:
        return f"{_TENSOR_NAMES[stem]}.{suffix}"
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)", stem)
    if match and match.group(2) in _LAYER_TENSOR_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_TENSOR_NAMES[match.group(2)]}.{suffix}"
    raise HomelabError(
        f"tensor '{gguf_name}' has no place in a llama model", "this GGUF is not a plain llama model"
    )


def _mlx_weights(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    weights = {}
    for name, tensor in tensors.items():
        kind = name.split(".")[2] if name.startswith("blk.") else ""
        weights[_hf_name(name)] = _unpermute_rows(tensor, heads[kind]) if kind in heads else tensor
    return weights


def _unpermute_rows(tensor: Any, n_heads: int) -> Any:
    """Undo convert_hf_to_gguf's `permute`: per head, rows (pair, half) back to (half, pair) order.

    llama.cpp's rope rotates adjacent rows (0,1), (2,3)...; Hugging Face's rotates row i with row
    i + head_dim/2. The rows of a quantized weight carry their own scales and biases (groups run
    along the input dimension), so weight, scales and biases are reordered alike, exactly.
    """
    rows = tensor.shape[0]
    return (
        tensor.reshape(n_heads, rows // n_heads // 2, 2, *tensor.shape[1:])
        .swapaxes(1, 2)
        .reshape(tensor.shape)
    )


def _bits(weights: dict[str, Any], module: str) -> int:
    packed, scales = weights[f"{module}.weight"], weights[f"{module}.scales"]
    return packed.shape[-1] * 32 // (scales.shape[-1] * GGUF_GROUP_SIZE)


def _quantization(weights: dict[str, Any]) -> dict[str, Any]:
    """mlx-lm's `quantization` config: the common bit width, plus per-module exceptions."""
    modules = [name.removesuffix(".scales") for name in weights if name.endswith(".scales")]
    if not modules:
        return {}
    bits = {module: _bits(weights, module) for module in modules}
    common = Counter(bits.values()).most_common(1)[0][0]
    config: dict[str, Any] = {"group_size": GGUF_GROUP_SIZE, "bits": common}
    for module, width in bits.items():
        if width != common:
            config[module] = {"group_size": GGUF_GROUP_SIZE, "bits": width}
    return config


def _describe_layout(weights: dict[str, Any]) -> str:
    counts: Counter[str] = Counter()
    for name in weights:
        if name.endswith(".scales"):
            counts[f"{_bits(weights, name.removesuffix('.scales'))}-bit"] += 1
        elif f"{name.removesuffix('.weight')}.scales" not in weights and not name.endswith(".biases"):
            counts["float"] += 1
    return ", ".join(f"{kind}: {n}" for kind, n in sorted(counts.items()))


def _build_tokenizer(meta: _Metadata) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` equal to the one llama.cpp builds from the same keys."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise HomelabError(
            f"tokenizer type '{model}' is not supported by models.convert (byte-level BPE only)",
            "use the model's MLX repo from mlx-community instead",
        )
    pre = str(meta.get("tokenizer.ggml.pre", "gpt2"))
    if pre not in PRE_TOKENIZER_SPLITS:
        raise HomelabError(
            f"pre-tokenizer '{pre}' is not known to models.convert",
            f"known: {', '.join(sorted(PRE_TOKENIZER_SPLITS))}; use the model's MLX repo instead",
        )
    tokens: list[str] = meta.need("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in meta.need("tokenizer.ggml.merges")]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in PRE_TOKENIZER_SPLITS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    typed = list(zip(tokens, meta.get("tokenizer.ggml.token_type") or [1] * len(tokens), strict=True))
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, kind in typed if kind == _CONTROL_TOKEN]
    )
    tokenizer.add_tokens(
        [AddedToken(t, normalized=False) for t, kind in typed if kind == _USER_DEFINED_TOKEN]
    )
    if meta.get("tokenizer.ggml.add_bos_token", False):
        bos = tokens[meta.need("tokenizer.ggml.bos_token_id")]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    return tokenizer


def _tokenizer_config(meta: _Metadata) -> dict[str, Any]:
    tokens = meta.need("tokenizer.ggml.tokens")
    special = {
        f"{role}_token": tokens[token_id]
        for role, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))
        if (token_id := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None
    }
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.need("{arch}.context_length")),
        **special,
    }
    if (template := meta.get("tokenizer.chat_template")) is not None:
        config["chat_template"] = template
    return config


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise HomelabError(
            f"converting needs {describe_size(needed)} in {folder}, only {describe_size(free)} is free",
            "free some space or pass --output on another disk",
        )


def _check_replaceable(output: Path, force: bool) -> None:
    """Refuse an existing `output` unless forced, and even then unless it is an earlier conversion
    (our marker and only our files), so a mistyped --output never deletes someone's directory."""
    if not (output.exists() or output.is_symlink()):
        return
    if not force:
        raise HomelabError(f"{output} already exists", "pass --force to replace it")
    ours = output.is_dir() and not output.is_symlink() and (output / MARKER).is_file()
    if not ours or not {p.name for p in output.iterdir()} <= OUTPUT_FILES:
        raise HomelabError(
            f"{output} is not an earlier models.convert output (no {MARKER}, or files of its own);"
            " --force replaces only those",
            "remove it yourself or give another --output",
        )


def _replace(output: Path, staging: Path) -> None:
    """Move the finished directory into place; an old one is removed only once the new one is there."""
    old = output.with_name(f".{output.name}.old")
    if output.exists():
        shutil.rmtree(old, ignore_errors=True)
        output.rename(old)
    staging.rename(output)
    shutil.rmtree(old, ignore_errors=True)
