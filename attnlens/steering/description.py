"""A steering description: which registered methods steer, with which settings, in a form that serialises.

The one form every door takes: ``{method: settings}`` (JSON-able), or a list of
method names, ``{method: settings}`` objects and ``[method, settings]`` pairs. The
pipeline's ``steer=``, the server's ``extra_body={"attnlens": {"steer": ...}}``, the
command line's ``--steering JSON`` (generate, batch, experiment, tune, compare), lm-eval's
``--model_args steer=...`` (:mod:`attnlens.api.lm_eval_backend`) and an experiment's
``steering`` read it through :func:`entries` and :func:`parse`; each
method checks its own settings with its :class:`~attnlens.steering.registry.Param` s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..core.errors import AttnlensError
from . import registry


class DescriptionError(AttnlensError):
    """A steering description that cannot be read; ``where`` names the part (``steer``, ``steer.guide``, ...)."""

    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


def entries(value: Any, where: str = "steer") -> list[tuple[str, dict[str, Any], str]]:
    """``(method, settings, where)`` for each entry of a description, in order, each method once.

    Method names are checked against the registry (``"none"`` entries are left out); settings
    must be objects. The settings are not yet converted (see :func:`parse`).
    """
    if isinstance(value, str):
        raw: list[tuple[Any, Any, str]] = [(value, {}, f"{where}.{value}")]
    elif isinstance(value, Mapping):
        raw = [(name, settings, f"{where}.{name}") for name, settings in value.items()]
    elif isinstance(value, (list, tuple)):
        raw = []
        for i, entry in enumerate(value):
            if isinstance(entry, str):
                raw.append((entry, {}, f"{where}.{entry}"))
            elif isinstance(entry, Mapping):
                raw.extend((name, settings, f"{where}.{name}") for name, settings in entry.items())
            elif isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str):
                raw.append((entry[0], entry[1], f"{where}.{entry[0]}"))
            else:
                raise DescriptionError(f"{where}[{i}] must be a method name, an object {{method: settings}} or a "
                                       f"[method, settings] pair, got {entry!r}", f"{where}[{i}]")
    else:
        raise DescriptionError(f"{where} must be an object {{method: settings}} or a list of them, got "
                               f"{type(value).__name__}", where)
    offered = registry.methods() + ("none",)
    out: list[tuple[str, dict[str, Any], str]] = []
    for name, settings, at in raw:
        if not isinstance(name, str) or name not in offered:
            raise DescriptionError(f"unknown steering method {name!r}; registered: {', '.join(offered)}", at)
        if settings is None:
            settings = {}
        if not isinstance(settings, Mapping):
            raise DescriptionError(f"the settings of {name} must be an object {{parameter: value}}, got "
                                   f"{settings!r}", at)
        if any(name == seen for seen, _, _ in out):
            raise DescriptionError(f"steering method {name!r} is given twice", at)
        if name != "none":
            out.append((name, dict(settings), at))
    return out


def parse(value: Any, where: str = "steer") -> dict[str, dict[str, Any]]:
    """A description as ``{method: settings}``, every method's settings checked by its own parameters
    (the values are returned as given: the method converts them when it runs).

    ``value`` may also be JSON text, or ``@PATH`` of a JSON file (the command line's form).
    """
    if isinstance(value, str) and (value.lstrip().startswith(("{", "[")) or value.startswith("@")):
        value = loads(value, where)
    out: dict[str, dict[str, Any]] = {}
    for name, settings, at in entries(value, where):
        try:
            registry.get(name).settings(settings)
        except DescriptionError:
            raise
        except AttnlensError as exc:
            raise DescriptionError(str(exc), at) from None
        out[name] = settings
    return out


def loads(text: str, where: str = "steer") -> Any:
    """JSON text, or the JSON file ``@PATH`` names, as Python values."""
    source = text
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DescriptionError(f"{where}: cannot read {path}: {exc.strerror or exc}", where) from None
    try:
        return json.loads(source)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DescriptionError(f"{where}: not a JSON steering description ({exc}); write e.g. "
                               '\'{"guide": {"delta_mid": 2}}\'', where) from None
