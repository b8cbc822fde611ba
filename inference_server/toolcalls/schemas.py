"""JSON Schemas as clients send them: checked at the boundary, relaxed where the grammar cannot follow.

`check_schema` is the API's test ("is this a schema at all?", a 400 if not). `grammar_schema` turns a
valid schema into one llguidance compiles: keywords it does not implement (`if`/`then`, `not`,
`uniqueItems`, `propertyNames`, unknown `format`s, ...) are ignored by its lenient mode, a `pattern`
its regex engine rejects (look-around, back-references) is dropped, a remote `$ref` becomes "any
value", and a schema that still does not compile constrains only to its top-level type. Each relaxation
is logged once, on one line; none raises.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

# Compact JSON, as the chat templates render it (`tojson`: ", " and ": "): in distribution for the
# model, and no run of whitespace a small model could loop in forever.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "lenient": True,
}


class SchemaError(ValueError):
    """The value is not a JSON Schema; the message says where and why, on one line."""


def check_schema(schema: Any) -> None:
    """Raise SchemaError unless `schema` is a JSON Schema object (by its $schema's metaschema,
    draft 2020-12 when it names none)."""
    from jsonschema import Draft202012Validator, exceptions, validators

    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON Schema must be an object, not {type(schema).__name__}")
    cls = validators.validator_for(schema, default=Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "its top level"
        raise SchemaError(f"not a valid JSON Schema at {where}: {exc.message}") from None


def grammar_schema(schema: dict[str, Any], what: str) -> dict[str, Any]:
    """`schema` as llguidance can compile it, with JSON_OPTIONS; `what` names it in the log."""
    return json.loads(_grammar_schema(json.dumps(schema, sort_keys=False), what))


# Bounds for what a format's regex leaves unbounded. Under a format's narrow alphabet a small model
# at temperature 1 can write forever (an email's local part, a date-time's fraction of a second: seen
# on SmolLM2), where a free string it would soon close. The lengths are the standards' (RFC 5321 for
# an address, RFC 1035 for a host name) or far above any real value (a date-time is ~35 characters).
FORMAT_MAX_LENGTH = {
    "email": 254,
    "idn-email": 254,
    "hostname": 253,
    "idn-hostname": 253,
    "date-time": 64,
    "time": 32,
    "duration": 64,
    "uri": 2048,
    "uri-reference": 2048,
    "iri": 2048,
    "iri-reference": 2048,
}
# An integer without bounds gets JSON's interoperable range (RFC 7493), as Claude Code's own schemas
# spell it: at most 16 digits, where a run of digits could otherwise go on as long as a string.
SAFE_INTEGER = 2**53 - 1


@lru_cache(maxsize=256)
def _grammar_schema(text: str, what: str) -> str:
    schema = _bounded(json.loads(text))
    error, warnings = _compile_error(schema)
    relaxed: list[str] = list(warnings)
    if error:
        schema, dropped = _drop_unsupported(schema)
        relaxed += dropped
        error, warnings = _compile_error(schema)
        relaxed += [w for w in warnings if w not in relaxed]
    if error:
        relaxed.append(f"whole schema ({_one_line(error)})")
        schema = {"type": schema["type"]} if isinstance(schema.get("type"), str) else {}
    if relaxed:  # once per schema: the result is cached
        log.warning("%s: the grammar relaxes %s", what, "; ".join(_one_line(r) for r in relaxed))
    return json.dumps({**schema, "x-guidance": JSON_OPTIONS})


def _bounded(schema: Any) -> Any:
    """The schema with FORMAT_MAX_LENGTH and SAFE_INTEGER bounds where it sets none, and objects
    that list their properties closed to others unless they say otherwise: a small model otherwise
    invents keys (`{"city": "Paris", "service": {...}}`), valid but useless to the tool."""
    if isinstance(schema, list):
        return [_bounded(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _bounded(value) for key, value in schema.items()}
    fmt = schema.get("format")
    limit = FORMAT_MAX_LENGTH.get(fmt) if isinstance(fmt, str) else None
    if limit is not None and "maxLength" not in schema:
        out["maxLength"] = limit
    closable = isinstance(schema.get("properties"), dict) and schema.get("type", "object") == "object"
    if closable and "additionalProperties" not in schema and "patternProperties" not in schema:
        out["additionalProperties"] = False
    if schema.get("type") == "integer":
        if "minimum" not in schema and "exclusiveMinimum" not in schema:
            out["minimum"] = -SAFE_INTEGER
        if "maximum" not in schema and "exclusiveMaximum" not in schema:
            out["maximum"] = SAFE_INTEGER
    return out


def _compile_error(schema: dict[str, Any]) -> tuple[str, list[str]]:
    """llguidance's verdict on the schema: an error ('' if it compiles) and its warnings."""
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema({**schema, "x-guidance": JSON_OPTIONS})
    except ValueError as exc:
        return str(exc), []
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    return (messages[0] if is_error else ""), ([] if is_error else messages)


def _drop_unsupported(schema: Any, path: str = "") -> tuple[Any, list[str]]:
    """The schema without the patterns llguidance's regex engine rejects and without remote refs."""
    dropped: list[str] = []
    if isinstance(schema, list):
        items = []
        for i, item in enumerate(schema):
            new, more = _drop_unsupported(item, f"{path}/{i}")
            items.append(new)
            dropped += more
        return items, dropped
    if not isinstance(schema, dict):
        return schema, dropped
    out: dict[str, Any] = {}
    for key, value in schema.items():
        here = f"{path}/{key}"
        if (
            key == "pattern"
            and isinstance(value, str)
            and _compile_error({"type": "string", "pattern": value})[0]
        ):
            dropped.append(f"pattern {value!r} at {path or '/'}")
            continue
        if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
            dropped.append(f"remote $ref {value!r} at {path or '/'}")
            continue
        out[key], more = _drop_unsupported(value, here)
        dropped += more
    return out, dropped


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
