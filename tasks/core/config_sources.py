"""Where each setting's effective value comes from, read off invoke's own config levels.

invoke keeps every level it merged and the file each came from; a setting's source is the highest
level, in the order the settings are merged (config_file.LEVELS: the checkout's invoke.yaml lowest),
that holds it, so nothing here re-reads a file or an environment variable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.config_file import LEVELS, SECTIONS, merged, plain
from tasks.core.errors import HomelabError

_SECRET_NAMES = frozenset({"api_key", "hub_token"})
_SECRET_ENDINGS = ("_key", "_token", "password", "secret")


@dataclass(frozen=True)
class Setting:
    key: str  # dotted: server.port
    value: Any
    source: str  # where the effective value was set: a file, a variable, a flag or a default

    @property
    def secret(self) -> bool:
        """A key, token or password: shown as set/unset unless asked for."""
        name = self.key.rsplit(".", 1)[-1]
        return name in _SECRET_NAMES or name.endswith(_SECRET_ENDINGS)


def effective(config: Any, wanted: str = "") -> list[Setting]:
    """Every setting of the project's sections (or those under `wanted`, a section or SECTION.KEY),
    with its merged value and its source."""
    whole = merged(config)
    settings = [
        Setting(".".join(path), value, _source(config, path))
        for name in SECTIONS
        for path, value in _leaves(plain(whole.get(name)), (name,))
    ]
    if not wanted:
        return settings
    chosen = [s for s in settings if s.key == wanted or s.key.startswith(wanted + ".")]
    if not chosen:
        raise HomelabError(
            f"no setting '{wanted}'", f"see `inv config.show` for every SECTION.KEY ({', '.join(SECTIONS)})"
        )
    return chosen


def _leaves(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Leaf settings; an empty mapping (an empty inventory, say) is a leaf of its own."""
    if isinstance(value, Mapping) and value:
        for key, inner in value.items():
            yield from _leaves(inner, (*path, str(key)))
    elif value is not None or len(path) > 1:
        yield path, value


def _source(config: Any, path: tuple[str, ...]) -> str:
    for level in reversed(LEVELS):
        if _holds(getattr(config, f"_{level}", {}), path):
            return _describe(config, level, path)
    return "unknown"


def _holds(data: Any, path: tuple[str, ...]) -> bool:
    for part in path:
        if not isinstance(data, Mapping) or part not in data:
            return False
        data = data[part]
    return True


def _describe(config: Any, level: str, path: tuple[str, ...]) -> str:
    if level == "env":
        return getattr(config, "_env_prefix", "INVOKE_") + "_".join(path).upper()
    if level == "project":
        return f"{_home_relative(str(config._project_path))} (default)"
    if level in {"system", "user"}:
        return _home_relative(str(getattr(config, f"_{level}_path", "") or level))
    if level == "runtime":
        return f"-f {_home_relative(str(config._runtime_path))}"
    return {
        "defaults": "invoke default",
        "collection": "collection default",
        "overrides": "command-line flag",
        "modifications": "set by a task",
    }[level]


def _home_relative(path: str) -> str:
    home = str(Path.home())
    return "~" + path[len(home) :] if path.startswith(home + os.sep) else path
