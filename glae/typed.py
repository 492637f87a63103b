"""Typed dataclasses from untrusted mappings (YAML files, ``--set`` values, model-file metadata).

Every value is checked against its field's annotation, so a typo in a config or a damaged
model file gives one line naming the key instead of a crash deep inside training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any


def is_finite_number(value: Any) -> bool:
    """A real int or float (not a bool), neither NaN nor infinite nor past a float's range: what untrusted numbers must be."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int like 10**400, which JSON can hold
        return False


def parse_json(text: str) -> Any:
    """Untrusted JSON; ValueError for anything that is not, including what breaks the parser.

    Beyond malformed text, a hostile file can hold a 5000-digit integer (ValueError, not a
    JSONDecodeError) or 100,000 nested brackets (RecursionError).
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("is not JSON (or holds numbers or nesting beyond what it may)") from None


def convert(value: Any, annotation: Any, key: str) -> Any:
    """Check and convert one value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping")
        return from_dict(typing.cast(type, annotation), value, key + ".")  # an annotation: a class, not an instance
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ValueError(f"{key}: {value!r} is not one of {typing.get_args(annotation)}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(value, option, key)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{key}: {value!r} does not fit {annotation}")
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(annotation)
        return [convert(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads 1e-3 as a string: accept numbers written that way.
            try:
                value = float(value)
            except ValueError:
                pass
        if not is_finite_number(value):  # NaN or infinity would only surface as a broken loss, hours later
            raise ValueError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """``cls(**data)`` with every value checked; ``base`` (an instance) supplies the fields not given.

    A partial nested section keeps the rest of that field's own default: ``stage.lr=0.1``
    must not reset the section's other fields to their class defaults.
    """
    hints = typing.get_type_hints(cls)
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields_by_name)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(prefix + k for k in sorted(unknown))}; known: {sorted(fields_by_name)}")
    values = {}
    for name, value in data.items():
        factory = fields_by_name[name].default_factory
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) and factory not in (dataclasses.MISSING, hints[name]):
            # A default that is not the class's own (e.g. a preset) is the base the section edits.
            values[name] = from_dict(hints[name], value, prefix + name + ".", factory())
        else:
            values[name] = convert(value, hints[name], prefix + name)
    return cls(**values) if base is None else dataclasses.replace(base, **values)
