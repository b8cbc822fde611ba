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


@task(
    help={
        "name": "catalog name of a llama-architecture GGUF model, or a path to a .gguf file",
        "output": "directory to write (default: <models.converted_dir>/<name>)",
        "force": "replace the output directory if it exists",
    }
)
def convert(c: Context, name: str, output: str = "", force: bool = False) -> None:
    """Convert a llama-architecture GGUF to an MLX model directory.

    Q4_0, Q4_1 and Q8_0 weights keep their exact bytes; other GGUF types become float16.
    """
    from pathlib import Path

    from tasks.core import config
    from tasks.core import convert as conv
    from tasks.core.catalog import describe_size
    from tasks.core.console import console

    settings = config.load(c.config)
    gguf = conv.find_source(name, settings.models)
    target = Path(output).expanduser() if output else conv.default_output(name, settings.models)
    result = conv.convert_gguf(gguf, target.absolute(), force=force)
    console().print(
        f"[green]converted[/] {gguf.name} -> {result.output} "
        f"({describe_size(result.size_bytes)}; {result.tensors} tensors, {result.layout})"
    )
