"""Views: which function draws each kind of record, in the one registry type (:mod:`attnlens.core.registry`).

A result's view lives in ``attnlens.viz``, above the layers that make most results, so the views
register themselves here by the record's class (:func:`register_view`) and a record finds its view
through the registry (:func:`view_of`, along the record's class and its bases). Nothing in this layer
imports the views: the package root gives the registry a source that imports them
(:func:`add_view_source`), which runs before the registry is first read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import AttnlensError
from .registry import Registry


def _key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class RecordView:
    """The view of one record class: ``function(record, **options)`` returns an :class:`attnlens.viz.HTMLView`.

    Its name (the registry key) is the record class's qualified name."""

    def __init__(self, record_type: type, function: Callable[..., Any]) -> None:
        if not isinstance(record_type, type):
            raise AttnlensError(f"a view is registered for a record class, got {record_type!r}")
        if not callable(function):
            raise AttnlensError(f"the view of {record_type.__name__} must be callable, got {function!r}")
        self.record_type = record_type
        self.function = function
        self.name = _key(record_type)

    def __repr__(self) -> str:
        return f"<view of {self.name}>"


_VIEWS: Registry[RecordView] = Registry("view", RecordView, aliases=lambda view: (), name_rule=bool,
                                        name_help="a record class's qualified name")


def register_view(cls: type, view: Callable[..., Any]) -> None:
    """Make ``view(record, **options)`` (returning an :class:`attnlens.viz.HTMLView`) the view of ``cls``
    (a later registration for the same class replaces it)."""
    _VIEWS.register(RecordView(cls, view), replace=True)


def add_view_source(source: Callable[[], Any]) -> None:
    """``source()`` registers views; it runs once, before a view is first looked up."""
    _VIEWS.add_source(source)


def view_function(record: Any) -> Callable[..., Any] | None:
    """The view function of ``record``'s class or its nearest base that has one (None: no view)."""
    for klass in type(record).__mro__:
        key = _key(klass)
        if key in _VIEWS:
            return _VIEWS.get(key).function
    return None


def view_of(record: Any, **options: Any) -> Any:
    """The view of ``record`` (an :class:`attnlens.viz.HTMLView`); a record with no view raises."""
    function = view_function(record)
    if function is None:
        raise AttnlensError(f"a {type(record).__name__} has no view")
    return function(record, **options)
