"""Config: what every setting is here and where its value comes from."""

from __future__ import annotations

import json as jsonlib
from typing import Any

from invoke import Context

from tasks._task import JSON_HELP, task


@task(
    help={
        "key": "one setting or section (server.port, server); default: every setting",
        "json": JSON_HELP,
        "reveal": "show secrets (api_key, hub_token, …) instead of set/unset",
    },
)
def show(c: Context, key: str = "", json: bool = False, reveal: bool = False) -> None:
    """Show each setting's effective value and its source (invoke.yaml, ~/.invoke.yaml, INVOKE_*, -f …).

    `--key server.port` (or a section) narrows it (a flag: invoke has no optional positionals);
    `fab -H host config.show` shows that host's own view."""
    from tasks.core import config_sources
    from tasks.core.console import print_table

    found = config_sources.effective(c.config, key)
    rows = [(s.key, _shown(s, reveal, json), s.source) for s in found]
    print_table("Settings", ["setting", "value", "source"], rows)


def _shown(setting: Any, reveal: bool, as_json: bool) -> Any:
    """A secret as set/unset unless revealed; for a table, a value as YAML-ish text ("" stays visible)."""
    value = setting.value
    if setting.secret and not reveal:
        return "set" if value else "unset"
    if as_json or (isinstance(value, str) and value):
        return value
    return jsonlib.dumps(value)
