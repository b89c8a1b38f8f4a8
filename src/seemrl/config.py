"""Settings typed by the dataclasses that take them: one source of truth per algorithm.

Every section of the workflow config that becomes a dataclass (an algorithm's `Config`, the
recipe's `RecipeConfig`, online SAC's `OnlineSACConfig`, a critic normalisation spec) is checked
against a JSON schema generated from that dataclass's field types and one-line docs, so a new
field is typed the moment it is written. An error names the config key (`algorithms.iql.critic_lr`),
the expected type and what was given, with a hint for YAML's `3e-4` (read as a string: YAML 1.1
needs a dot, `3.0e-4`). Value ranges are the dataclasses' own `__post_init__` checks.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import types
import typing
from typing import Any, Mapping

YAML_FLOAT_HINT = " (YAML reads a number like 3e-4 without a dot as a string: write 3.0e-4)"

# A critic normalisation spec (`critic_norms.<name>`, an algorithm's `critic` field): the keys of
# seemrl.training.nets.CRITIC_SPEC_DEFAULTS and the critic optimiser's weight decay.
CRITIC_SPEC_TYPES: dict[str, Any] = {
    "norm": str, "norm_layers": typing.Optional[list[int]], "affine": bool, "dropout": float,
    "weight_norm_output": bool, "ofn": bool, "weight_decay": float,
}


class ConfigError(ValueError):
    """A config value of the wrong type or an unknown key; the message names the key."""


def type_schema(tp: Any) -> dict:
    """JSON schema of a field's type annotation (int, float, bool, str, dict, X | None, tuple[int, ...],
    list[int])."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(a) for a in args]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if origin in (tuple, list):  # a tuple field (layer widths) needs an item, a list may be empty
        item = args[0] if args else Any
        schema = {"type": "array", "minItems": 1} if origin is tuple else {"type": "array"}
        if item is not Any and item is not Ellipsis:
            schema["items"] = type_schema(item)
        if origin is tuple and args and args[-1] is not Ellipsis:  # a fixed-length tuple
            schema.update(minItems=len(args), maxItems=len(args), prefixItems=[type_schema(a) for a in args])
            schema.pop("items", None)
        return schema
    simple = {int: "integer", float: "number", bool: "boolean", str: "string", dict: "object",
              type(None): "null"}
    if tp in simple:
        return {"type": simple[tp]}
    if tp is Any:
        return {}
    raise TypeError(f"no JSON schema for the annotation {tp!r}")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's one-line doc: the comment after it in the source of the class, or of the base
    class that declares it last ('' if none)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        docs.update({m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.*)$", source, re.M)})
    return docs


@functools.cache
def dataclass_schema(cls: type) -> dict:
    """The JSON schema of a dataclass's fields: each typed and documented, none required, no other key."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    properties = {}
    for f in dataclasses.fields(cls):
        schema = type_schema(hints[f.name])
        if f.name == "critic":
            schema = critic_spec_schema()
        properties[f.name] = {**schema, "description": docs.get(f.name, "")}
    return {"type": "object", "additionalProperties": False, "properties": properties}


@functools.cache
def critic_spec_schema() -> dict:
    return {"type": "object", "additionalProperties": False,
            "properties": {k: type_schema(t) for k, t in CRITIC_SPEC_TYPES.items()}}


def describe(schema: dict) -> str:
    """A type in words: 'a number', 'a list of integers (at least 1)', ..."""
    if "anyOf" in schema:
        return " or ".join(describe(s) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind == "array":
        item = describe(schema["items"]).removeprefix("an ").removeprefix("a ") if "items" in schema else "value"
        n = schema.get("minItems", 0)
        if schema.get("maxItems") == n:
            return f"a list of exactly {n} {item}s"
        return f"a list of {item}s" + (f" (at least {n})" if n else "")
    words = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
             "object": "a mapping", "null": "null"}
    return words.get(kind, "a value")


def check_fields(schema: dict, values: Any, where: str) -> None:
    """Raise ConfigError for the first value in `values` that `schema` rejects, naming `where.<field>`."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(values), key=lambda e: (len(e.absolute_path), list(e.absolute_path)))
    if not errors:
        return
    error = errors[0]
    path = ".".join([where, *(str(p) for p in error.absolute_path)])
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        raise ConfigError(f"config key {path}: unknown field(s) {unknown}; allowed: {allowed}")
    expected = describe(error.schema)
    value = error.instance
    wants_number = any(o.get("type") in ("number", "integer") for o in error.schema.get("anyOf", [error.schema]))
    hint = YAML_FLOAT_HINT if wants_number and isinstance(value, str) and _number_like(value) else ""
    if error.validator in ("minItems", "maxItems"):
        got = f"{len(value)} item(s): {value!r}"
    else:
        got = f"{value!r} ({_json_type(value)})"
    raise ConfigError(f"config key {path}: expected {expected}, got {got}{hint}")


def check_dataclass_fields(cls: type, values: Mapping, where: str) -> None:
    """`values` (a config section) against the schema of dataclass `cls`, naming `where.<field>`;
    a setting that was renamed (`cls.RENAMED`) is named with what replaces it."""
    renamed = getattr(cls, "RENAMED", {})
    for key in values:
        if key in renamed and key not in dataclass_schema(cls)["properties"]:
            raise ConfigError(f"config key {where}.{key}: renamed; write {' and '.join(renamed[key])} instead")
    check_fields(dataclass_schema(cls), dict(values), where)


def migrate(cls: type, values: Mapping) -> dict:
    """`values` saved under former setting names (`cls.RENAMED`) with each value under the names
    that replace it (a name given explicitly wins): how a checkpoint written before a rename loads."""
    out = dict(values)
    for old, new in getattr(cls, "RENAMED", {}).items():
        if old in out and old not in dataclass_schema(cls)["properties"]:
            value = out.pop(old)
            for name in new:
                out.setdefault(name, value)
    return out


def build(cls: type, values: Mapping, where: str):
    """cls(**values) after the type check; its value checks (ValueError) come back naming `where`."""
    check_dataclass_fields(cls, values, where)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {where}: {exc}") from exc


def _number_like(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    return {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping",
            type(None): "null"}.get(type(value), type(value).__name__)
