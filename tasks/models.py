"""Models: the catalog, downloads from the hub (or a LAN mirror), what is installed, and its checks."""

from __future__ import annotations

from invoke import Context

from tasks._task import task


@task
def catalog(c: Context) -> None:
    """Show every catalog entry: name, format, size, installed?"""
    from tasks.core import catalog as cat
    from tasks.core import config
    from tasks.core.console import print_table

    settings = config.load(c.config)
    entries = cat.load_catalog(settings.models.catalog)
    rows = [
        (
            e.name,
            e.format,
            cat.describe_size(e.size_bytes),
            e.repo,
            "bundled" if e.bundled else "",
            e.description,
        )
        for e in entries.values()
    ]
    print_table("Model catalog", ["name", "format", "size", "repo", "installed", "description"], rows)
