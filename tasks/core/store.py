"""Where a catalog model's file is on this machine (minimal: the bundled file; downloads come later)."""

from __future__ import annotations

from pathlib import Path

from tasks.core.catalog import CatalogEntry
from tasks.core.config import ModelsSettings


def installed_file(entry: CatalogEntry, models: ModelsSettings) -> Path | None:
    """The file to load for a model, or None when it is not on this machine."""
    return entry.bundled.locate() if entry.bundled is not None else None
