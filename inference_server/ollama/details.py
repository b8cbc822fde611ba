"""What Ollama's /api/tags, /api/show and /api/ps say about a model file, read without loading it.

A GGUF file's header (its key-value metadata and tensor shapes, a few MB at the front) gives the
architecture, quantisation, parameter count, trained context and chat template; the tensor data is
never read. The digest is the file's sha256 when the file is a Hugging Face cache blob (the blob is
named by its sha256, which the download checked); otherwise it is the sha256 of the file's path, size
and modification time: stable while the file stays as it is, but not a hash of its content (hashing a
multi-GB file per listing is not cheap).
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

_SHA256 = re.compile(r"[0-9a-f]{64}")
# llama.cpp's llama_ftype, as `general.file_type` records it
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
    32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}  # fmt: skip
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Facts:
    """What the header says; empty where the file is not GGUF or does not say."""

    architecture: str = ""
    quantization: str = ""
    parameters: int = 0
    context_length: int = 0
    chat_template: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # the scalar and string keys

    @property
    def parameter_size(self) -> str:
        """As Ollama prints it: 134.52M, 1.2B."""
        if not self.parameters:
            return ""
        if self.parameters >= 1_000_000_000:
            return f"{self.parameters / 1e9:.1f}B"
        return f"{self.parameters / 1e6:.2f}M"


def facts(path: Path) -> Facts:
    """The header's facts (cached per file version); empty Facts for anything that is not GGUF."""
    try:
        stat = path.stat()
    except OSError:
        return Facts()
    return _facts(path, stat.st_size, stat.st_mtime_ns) if path.is_file() else Facts()


def digest(path: Path) -> str:
    """`sha256:<hex>`: the content's hash when the cache names the blob by it, else a stable stand-in."""
    resolved = path.resolve()
    if resolved.parent.name == "blobs" and _SHA256.fullmatch(resolved.name):
        return f"sha256:{resolved.name}"
    try:
        stat = resolved.stat()
        identity = f"{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}"
    except OSError:
        identity = str(resolved)
    return "sha256:" + hashlib.sha256(identity.encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def _facts(path: Path, size: int, mtime_ns: int) -> Facts:
    try:
        with path.open("rb") as f:
            return _read(f)
    except (OSError, ValueError, KeyError, struct.error):  # not a GGUF file we can read
        return Facts()


def _read(f: BinaryIO) -> Facts:
    if f.read(4) != b"GGUF":
        return Facts()
    version, tensors, keys = struct.unpack("<IQQ", f.read(20))
    if version < 2:
        return Facts()
    metadata: dict[str, Any] = {}
    for _ in range(keys):
        key = _string(f)
        kind = _u32(f)
        value = _value(f, kind)
        if value is not None:
            metadata[key] = value
    parameters = 0
    for _ in range(tensors):
        _skip_string(f)
        rank = _u32(f)
        dims = struct.unpack(f"<{rank}Q", f.read(8 * rank))
        f.read(12)  # type, offset
        parameters += math.prod(dims)
    arch = str(metadata.get("general.architecture", ""))
    file_type = metadata.get("general.file_type")
    return Facts(
        architecture=arch,
        quantization=_FILE_TYPES.get(file_type, "") if isinstance(file_type, int) else "",
        parameters=parameters,
        context_length=int(metadata.get(f"{arch}.context_length", 0) or 0),
        chat_template=str(metadata.pop("tokenizer.chat_template", "")),
        metadata=metadata,
    )


def _u32(f: BinaryIO) -> int:
    value: int = struct.unpack("<I", f.read(4))[0]
    return value


def _string(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode()


def _skip_string(f: BinaryIO) -> None:
    (length,) = struct.unpack("<Q", f.read(8))
    f.seek(length, 1)


def _value(f: BinaryIO, kind: int) -> Any:
    """A scalar or string value; arrays (the vocabulary, merges) are skipped and give None."""
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, count = struct.unpack("<IQ", f.read(12))
        if item == _STRING:
            for _ in range(count):
                _skip_string(f)
        else:
            f.seek(count * struct.calcsize(_SCALARS[item]), 1)
        return None
    fmt = _SCALARS[kind]
    return struct.unpack(f"<{fmt}", f.read(struct.calcsize(fmt)))[0]
