"""JSON conversion: results as plain values (dicts, lists, numbers, strings) that ``json.dumps`` takes."""

from __future__ import annotations

import dataclasses
from typing import Any


def to_plain(value: Any) -> Any:
    """``value`` with tensors (and numpy arrays) as nested lists, tuples as lists, dataclasses as dicts:
    something ``json.dumps`` accepts. Objects with a ``to_dict()`` are converted through it."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors, numpy arrays and scalars
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    raise TypeError(f"cannot convert a {type(value).__name__} to JSON")


def plain_fields(obj: Any) -> Any:
    """A result object's own fields as plain values: a dataclass's fields, a dict's items, a list's items."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    raise TypeError(f"cannot convert a {type(obj).__name__} to JSON")
