"""catalog.yaml: short model names mapped to verified Hugging Face sources, validated on load."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.core.config import read_yaml
from tasks.core.errors import ConfigError, HomelabError


class Bundled(BaseModel):
    """A model file shipped inside Python packages, found without importing them.

    Either `file` is a path inside `package`, or the file is too big for one package and ships as
    ordered `parts` ("<package>/<path inside it>", each in its own package): then `file` is the name
    of the assembled copy under `bundled_dir()` (tasks.core.store.materialise assembles it once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    package: str
    file: str
    parts: list[str] = []
    size_bytes: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @model_validator(mode="after")
    def _safe_names(self) -> Bundled:
        for name in self.parts:
            pieces = Path(name).parts
            if Path(name).is_absolute() or ".." in pieces or len(pieces) < 2:
                raise ValueError(f"part '{name}' must be <package>/<path inside it>")
        if self.parts and Path(self.file).name != self.file:
            raise ValueError("with parts, 'file' is the assembled file's name (no folders)")
        return self

    def locate(self) -> Path | None:
        """The file to load, by lookups only: inside the package, or the assembled copy when it is
        there whole (size checked; its sha256 was checked before it was renamed into place)."""
        if not self.parts:
            return _in_package(self.package, self.file)
        assembled = self.assembled_path()
        if assembled.is_file() and assembled.stat().st_size == self.size_bytes:
            return assembled
        return None

    def installed(self) -> bool:
        """Whether the packages are there, by lookups only (parts are assembled when first used)."""
        return all(self.part_paths()) if self.parts else self.locate() is not None

    def part_paths(self) -> list[Path | None]:
        """Each part's file, in order; None where its package (or the file in it) is missing."""
        return [_in_package(*name.split("/", 1)) for name in self.parts]

    def assembled_path(self) -> Path:
        return bundled_dir() / self.file


def bundled_dir() -> Path:
    """Where bundled files shipped in parts are assembled: the user's cache (XDG_CACHE_HOME), beside
    models.converted_dir's default."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "llm-homelab" / "bundled"


def _in_package(package: str, file: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / file
        if candidate.is_file():
            return candidate
    return None


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    kind: Literal["chat", "embedding"] = Field(
        default="chat", description="an embedding model is served for embeddings only"
    )
    format: Literal["gguf", "mlx", "safetensors"]
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    files: list[str] = []
    patterns: list[str] = []
    size_bytes: int = Field(gt=0, description="approximate total download size")
    license: str
    context_length: int = Field(gt=0)
    mlx_repo: str | None = None
    revision: str | None = None
    sha256: dict[str, str] = {}
    bundled: Bundled | None = None

    @model_validator(mode="after")
    def _has_source(self) -> CatalogEntry:
        if not self.files and not self.patterns:
            raise ValueError("needs 'files' or 'patterns'")
        unknown = set(self.sha256) - set(self.files)
        if unknown:
            raise ValueError(f"sha256 given for files not in 'files': {sorted(unknown)}")
        return self


def load_catalog(path: Path) -> dict[str, CatalogEntry]:
    """Entries by name; any problem is one line naming the entry and the field."""
    data = read_yaml(path)
    unknown_top = set(data) - {"models"}
    if unknown_top:
        raise ConfigError(
            f"{path.name}: unknown top-level key(s) {sorted(unknown_top)}", "put every entry under 'models:'"
        )
    models = data.get("models")
    if not isinstance(models, list):
        raise ConfigError(f"{path.name}: 'models' must be a list of entries", "see the existing entries")
    entries: dict[str, CatalogEntry] = {}
    for index, raw in enumerate(models):
        name = raw.get("name") if isinstance(raw, dict) else None
        label = f"entry '{name}'" if name else f"entry #{index + 1}"
        if name in entries:
            raise ConfigError(f"{path.name}: duplicate {label}", "give every entry a unique name")
        try:
            entry = CatalogEntry.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "entry"
            hint = {"missing": "missing field", "extra_forbidden": "unknown field"}.get(
                err["type"], err["msg"]
            )
            raise ConfigError(f"{path.name}: {label}: {field}: {hint}", "fix that entry") from None
        entries[entry.name] = entry
    return entries


def get_entry(catalog: dict[str, CatalogEntry], name: str) -> CatalogEntry:
    try:
        return catalog[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(catalog), n=1)
        fix = f"did you mean '{close[0]}'?" if close else "run `inv models.catalog` to see the names"
        raise HomelabError(f"unknown model '{name}'", fix) from None


def describe_size(size: int | float) -> str:
    """Bytes in the units people read (1 kB = 1000 B, as the hub shows sizes)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
