"""catalog.yaml: short model names mapped to verified Hugging Face sources, validated on load."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.core.config import read_yaml
from tasks.core.errors import ConfigError, HomelabError


class Bundled(BaseModel):
    """A model file shipped inside a Python package, found without importing the package."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    package: str
    file: str
    size_bytes: int = Field(gt=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def locate(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / self.file
            if candidate.is_file():
                return candidate
        return None


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
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
