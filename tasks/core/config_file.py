"""invoke.yaml as a file: where it is, reading it with one-line errors, and refusing INVOKE_* overrides
invoke cannot cast. No pydantic here: the collection calls `check_env_overrides` while it loads, and
`inv -l` must not pay for the typed settings (tasks/core/config.py) it never uses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from tasks.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = PROJECT_ROOT / "invoke.yaml"

_KINDS = {int: "a whole number", float: "a number"}
# config.Settings' fields
SECTIONS = ("models", "server", "lab_gateway", "hosts", "remote", "git", "test", "doctor")


def expand_path(value: str) -> Path:
    """A path setting as every reader takes it: `~` and $VARS expanded, relative to this checkout."""
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return path if path.is_absolute() else PROJECT_ROOT / path


def plain(value: Any) -> Any:
    """Invoke's DataProxy objects to plain dicts and lists, so validation and digests see ordinary data."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


# The order settings are merged in, lowest first. invoke ranks the checkout's invoke.yaml (its
# "project" level) above /etc/invoke.yaml and ~/.invoke.yaml; since it sets every key, a machine's own
# file could then change nothing. Here it is the defaults those files override, as the README says.
LEVELS = (
    "defaults",
    "collection",
    "project",
    "system",
    "user",
    "env",
    "runtime",
    "overrides",
    "modifications",
)


def merged(config: Any) -> Any:
    """A Context's config merged in LEVELS' order (a plain dict is returned as it is)."""
    if not hasattr(config, "_project"):
        return config
    from invoke.config import merge_dicts, obliterate

    data: dict[str, Any] = {}
    for level in LEVELS:
        merge_dicts(data, getattr(config, f"_{level}", {}))
    obliterate(data, getattr(config, "_deletions", {}))
    return data


def sections(config: Any) -> dict[str, Any]:
    """The settings sections of the merged configuration (a Context's config or a plain dict)."""
    whole = merged(config)
    found = {name: plain(whole.get(name)) for name in SECTIONS}
    return {k: v for k, v in found.items() if v is not None}


def check_env_overrides(prefix: str, environ: Mapping[str, str]) -> None:
    """Refuse an override that invoke cannot cast, by the variable's name.

    invoke casts each PREFIX_SECTION_KEY variable to the type of the setting it overrides before any
    task runs (invoke.env.Environment._cast: lists refused, other non-strings via their type), and a
    value it cannot cast ends in a traceback inside invoke.
    """
    for path, default in _leaves(read_yaml(CONFIG_FILE), ()):
        name = prefix + "_".join(path).upper()
        if name not in environ or default is None or isinstance(default, bool | str):
            continue
        key = ".".join(path)
        if isinstance(default, list):
            raise ConfigError(
                f"{name}: '{key}' is a list, which invoke cannot read from the environment",
                f"unset {name} and set {key} in ~/.invoke.yaml",
            )
        kind = type(default)
        try:
            kind(environ[name])
        except ValueError:
            raise ConfigError(
                f"{name}={environ[name]!r}: '{key}' must be {_KINDS.get(kind, kind.__name__)}",
                f"fix or unset {name}",
            ) from None


def _leaves(data: Mapping[str, Any], path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _leaves(value, (*path, str(key)))
        else:
            yield (*path, str(key)), value


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from a file, with a one-line error for a missing or malformed file."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when PyYAML was built with it
    try:
        data = yaml.load(path.read_text(), Loader=loader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found", "restore it from git (git checkout -- FILE)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"{path.name}{where}: not valid YAML ({getattr(exc, 'problem', exc)})", "fix the syntax"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path.name}: top level must be a mapping of settings", "fix the file")
    return data
