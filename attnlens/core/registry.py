"""One registry type for everything attnlens looks up by name: steering methods, attribution methods,
runtimes, studies and views.

A :class:`Registry` holds objects of one base class under names (and their
aliases). It takes an instance, or a subclass to instantiate (so
``@registry.register`` works over a class), runs the kind's own checks, and
refuses a name (or alias) that another entry holds unless ``replace=True``.
Registering and reading are guarded by a lock, so threads that register their
own entries while others look entries up see a consistent table.

Entries may arrive late, without the registry's owner importing their code:

- :meth:`Registry.declare` names an entry and where it lives (``"package.module:attr"``); the
  module is imported the first time the entry is asked for, so listing names stays cheap (the
  built-in studies are declared this way);
- :meth:`Registry.add_source` gives a function that registers entries; it runs once, before the
  registry is first read (the package root wires the views this way);
- plugins: before any registry is first read, the entry points of the ``attnlens.plugins`` group
  are loaded (:mod:`attnlens.core.plugins`), so an installed plugin's entries are there in every
  door (the command line, the pipeline, the server, the experiments).

Every registry is listed in :func:`registries`; the plugin loader registers an object a plugin
names in the registry whose base class it is an instance (or subclass) of.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import AttnlensError
from .plugins import load_installed_once, registries, track

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["Registry", "identifier", "registries"]


def identifier(name: str) -> bool:
    """The default name rule: a Python identifier (``guide``, ``scale_attention``)."""
    return name.isidentifier()


def _load_target(target: str) -> Any:
    """The object ``"package.module:attr"`` names (``"package.module"``: the module)."""
    module, _, attr = target.partition(":")
    value: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        value = getattr(value, part)
    return value


class Registry(Generic[T]):
    """Named entries of one kind (``kind`` is how messages call one, e.g. ``"steering method"``).

    Args:
        kind: the entry's kind in messages.
        base: the class every entry is an instance of (a ``runtime_checkable`` protocol works too).
        check: the kind's own checks of an entry, raising an AttnlensError.
        aliases: other names that select an entry (default: its ``aliases`` attribute).
        name_rule: which names are valid, and ``name_help`` says so in the error (default: identifiers).
        unknown: the message for a name no entry has, given the name and the registered names.
        error: the exception a name no entry has raises (an AttnlensError subclass).
    """

    def __init__(
        self,
        kind: str,
        base: type,
        *,
        check: Callable[[Any], None] | None = None,
        aliases: Callable[[Any], tuple[str, ...]] = lambda method: tuple(getattr(method, "aliases", ()) or ()),
        name_rule: Callable[[str], bool] = identifier,
        name_help: str = "an identifier",
        unknown: Callable[[Any, tuple[str, ...]], str] | None = None,
        error: type[AttnlensError] = AttnlensError,
    ) -> None:
        self.kind = kind
        self.base = base
        self._check = check
        self._aliases_of = aliases
        self._name_rule = name_rule
        self._name_help = name_help
        self._unknown = unknown
        self._error = error
        self._table: dict[str, T] = {}
        self._declared: dict[str, str] = {}  # name -> "module:attr", not yet imported
        self._order: dict[str, None] = {}  # every name, in the order it was first registered or declared
        self._sources: list[Callable[[], Any]] = []
        self._lock = threading.RLock()
        track(self)

    # ------------------------------------------------------------------ filling

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` is an entry of this kind (an instance of the base, or a subclass of it)."""
        if isinstance(value, type):
            try:
                return issubclass(value, self.base)
            except TypeError:  # a protocol with data members: the class is checked by its instance
                return False
        return isinstance(value, self.base)

    def register(self, method: Any, *, replace: bool = False) -> Any:
        """Add ``method`` (an instance of the base class, or a subclass to instantiate); returns what it was given."""
        if isinstance(method, type) and self.accepts(method):
            self.register(method(), replace=replace)
            return method
        if not isinstance(method, self.base):
            raise AttnlensError(f"register takes a {self.base.__name__}, got {type(method).__name__}")
        name = getattr(method, "name", None)
        if not isinstance(name, str) or not name or not self._name_rule(name):
            raise AttnlensError(f"a {self.kind}'s name must be {self._name_help}, got {name!r}")
        if self._check is not None:
            self._check(method)
        with self._lock:
            taken = self._names_and_aliases()
            for key in (name, *self._aliases_of(method)):
                holder = taken.get(key)
                if holder is not None and holder != name and not replace:
                    raise AttnlensError(f"a {self.kind} named {key!r} is already registered (pass replace=True)")
            if name in self._table and self._table[name] is not method and not replace:
                raise AttnlensError(f"a {self.kind} named {name!r} is already registered (pass replace=True)")
            self._table[name] = method
            self._declared.pop(name, None)
            self._order.setdefault(name, None)
        logger.debug("registered %s %s", self.kind, name)
        return method

    def declare(self, name: str, target: str) -> None:
        """Name an entry that lives at ``target`` (``"package.module:attr"``, an instance or a subclass of the
        base), imported and registered the first time it is asked for."""
        if ":" not in target:
            raise AttnlensError(f"declare {self.kind} {name!r}: write the target as 'package.module:attr', got {target!r}")
        with self._lock:
            if name in self._table or name in self._declared:
                raise AttnlensError(f"a {self.kind} named {name!r} is already registered (pass replace=True)")
            self._declared[name] = target
            self._order.setdefault(name, None)

    def add_source(self, source: Callable[[], Any]) -> None:
        """``source()`` registers entries; it runs once, before the registry is next read."""
        with self._lock:
            self._sources.append(source)

    def unregister(self, name: str) -> None:
        """Remove an entry."""
        with self._lock:
            if name not in self._declared and name not in self._table:
                raise AttnlensError(f"no {self.kind} named {name!r} is registered")
            self._declared.pop(name, None)
            self._table.pop(name, None)
            self._order.pop(name, None)

    def _names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(name for name in self._order if name in self._table or name in self._declared)

    # ------------------------------------------------------------------ reading

    def _ready(self) -> None:
        """Load the installed plugins (once per process) and run this registry's pending sources."""
        load_installed_once()
        while True:
            with self._lock:
                if not self._sources:
                    return
                source = self._sources.pop(0)
            source()

    def _load(self, name: str) -> None:
        """Import a declared entry and register it under its declared name."""
        with self._lock:
            target = self._declared.get(name)
            if target is None:
                return
            value = _load_target(target)
            if name in self._declared:  # importing it may have registered it already
                if isinstance(value, type) and self.accepts(value):
                    value = value()
                if getattr(value, "name", None) != name:
                    raise AttnlensError(f"{target} is a {self.kind} named {getattr(value, 'name', None)!r}, "
                                        f"declared as {name!r}")
                self.register(value, replace=True)

    def names(self) -> tuple[str, ...]:
        """The registered names (declared ones too), in registration order."""
        self._ready()
        return self._names()

    def values(self) -> tuple[T, ...]:
        """Every entry (declared ones imported), in registration order."""
        names = self.names()
        for name in names:
            self._load(name)
        with self._lock:
            return tuple(self._table[name] for name in names if name in self._table)

    def _names_and_aliases(self) -> dict[str, str]:
        with self._lock:
            out = {a: name for name, method in self._table.items() for a in self._aliases_of(method)}
            out.update({name: name for name in self._declared})
            out.update({name: name for name in self._table})
            return out

    def names_and_aliases(self) -> dict[str, str]:
        """Every name that selects an entry (its own and its aliases) -> the entry's name."""
        self._ready()
        return self._names_and_aliases()

    def get(self, key: Any) -> T:
        """An entry by name or alias (an instance of the base class is returned as it is)."""
        if not isinstance(key, type) and isinstance(key, self.base):
            return key  # type: ignore[return-value]
        self._ready()
        with self._lock:
            name = self._names_and_aliases().get(key) if isinstance(key, str) else None
            if name is None:
                names = self._names()
                if self._unknown is not None:
                    raise self._error(self._unknown(key, names))
                raise self._error(f"unknown {self.kind} {key!r}; registered: {', '.join(names) or 'none'}")
            self._load(name)
            return self._table[name]

    def __contains__(self, name: object) -> bool:
        self._ready()
        with self._lock:
            return name in self._table or name in self._declared

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def snapshot(self) -> tuple[dict[str, T], dict[str, str], dict[str, None]]:
        """The table as it is now, declared entries too (for :meth:`restore`)."""
        with self._lock:
            return dict(self._table), dict(self._declared), dict(self._order)

    def restore(self, saved: tuple[dict[str, T], dict[str, str], dict[str, None]]) -> None:
        """Put back a table taken by :meth:`snapshot`."""
        table, declared, order = saved
        with self._lock:
            self._table.clear()
            self._declared.clear()
            self._order.clear()
            self._table.update(table)
            self._declared.update(declared)
            self._order.update(order)
