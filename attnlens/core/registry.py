"""One table of named methods, shared by the steering and the attribution registries.

A :class:`Registry` holds objects of one base class under identifier names (and
their aliases). It takes an instance, or a subclass to instantiate (so
``@registry.register`` works over a class), runs the kind's own checks, and
refuses a name (or alias) that another method holds unless ``replace=True``.
Registering and reading are guarded by a lock, so threads that register their
own methods while others look methods up see a consistent table.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import AttnlensError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """Named methods of one kind (``kind`` is how messages call one, e.g. ``"steering method"``)."""

    def __init__(
        self,
        kind: str,
        base: type,
        *,
        check: Callable[[Any], None] | None = None,
        aliases: Callable[[Any], tuple[str, ...]] = lambda method: tuple(getattr(method, "aliases", ()) or ()),
    ) -> None:
        self.kind = kind
        self.base = base
        self._check = check
        self._aliases_of = aliases
        self._table: dict[str, T] = {}
        self._lock = threading.RLock()

    def register(self, method: Any, *, replace: bool = False) -> Any:
        """Add ``method`` (an instance of the base class, or a subclass to instantiate); returns what it was given."""
        if isinstance(method, type) and issubclass(method, self.base):
            self.register(method(), replace=replace)
            return method
        if not isinstance(method, self.base):
            raise AttnlensError(f"register takes a {self.base.__name__}, got {type(method).__name__}")
        name = getattr(method, "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise AttnlensError(f"a {self.kind}'s name must be an identifier, got {name!r}")
        if self._check is not None:
            self._check(method)
        with self._lock:
            taken = self.names_and_aliases()
            for key in (name, *self._aliases_of(method)):
                holder = taken.get(key)
                if holder is not None and holder != name and not replace:
                    raise AttnlensError(f"a {self.kind} named {key!r} is already registered (pass replace=True)")
            if name in self._table and self._table[name] is not method and not replace:
                raise AttnlensError(f"a {self.kind} named {name!r} is already registered (pass replace=True)")
            self._table[name] = method
        logger.debug("registered %s %s", self.kind, name)
        return method

    def unregister(self, name: str) -> None:
        """Remove a registered method."""
        with self._lock:
            if name not in self._table:
                raise AttnlensError(f"no {self.kind} named {name!r} is registered")
            del self._table[name]

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        with self._lock:
            return tuple(self._table)

    def values(self) -> tuple[T, ...]:
        with self._lock:
            return tuple(self._table.values())

    def names_and_aliases(self) -> dict[str, str]:
        """Every name that selects a method (its own and its aliases) -> the method's name."""
        with self._lock:
            out = {a: name for name, method in self._table.items() for a in self._aliases_of(method)}
            out.update({name: name for name in self._table})
            return out

    def get(self, key: Any) -> T:
        """A registered method by name or alias (an instance of the base class is returned as it is)."""
        if isinstance(key, self.base):
            return key  # type: ignore[return-value]
        with self._lock:
            name = self.names_and_aliases().get(key) if isinstance(key, str) else None
            if name is None:
                raise AttnlensError(
                    f"unknown {self.kind} {key!r}; registered: {', '.join(self._table) or 'none'}"
                )
            return self._table[name]

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def snapshot(self) -> dict[str, T]:
        """The table as it is now (for :meth:`restore`)."""
        with self._lock:
            return dict(self._table)

    def restore(self, saved: dict[str, T]) -> None:
        """Put back a table taken by :meth:`snapshot`."""
        with self._lock:
            self._table.clear()
            self._table.update(saved)
