"""Plugins: modules, or objects in them, that add entries to attnlens' registries. One loader, two ways in.

- **Installed**: an entry point of the ``attnlens.plugins`` group in a package's metadata, e.g. in its
  ``pyproject.toml``::

      [project.entry-points."attnlens.plugins"]
      my_methods = "my_package.attnlens_plugin"

  Installed plugins are loaded once per process, before any registry is first read
  (:meth:`attnlens.core.registry.Registry.names`, ``get`` ...), so their entries are there in every
  door: the command line, the pipeline, the server, the experiments. One that fails to load is
  logged as a warning naming it and skipped: a broken package does not stop attnlens.
- **Named**: ``attnlens --plugin MODULE`` on the command line, or :func:`load_plugins` in code. A named
  plugin that fails to load is a :class:`~attnlens.core.errors.PluginError` naming it.

What a plugin names (an entry point's value, or ``--plugin``'s argument):

- ``package.module``: the module is imported; it registers what it defines (``steering.register(...)``
  and the like), as a user's own module would;
- ``package.module:attr``: the module is imported and ``attr`` taken: an entry of a registry's kind (a
  steering method, an attribution method, a study, a runtime, a steering method's experiment profile, or
  a subclass of one to instantiate) is registered in that registry (:func:`attnlens.core.registry.registries`); a function is called with no
  arguments (it registers what it wants); a list or tuple registers each of its items.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from .errors import AttnlensError, PluginError

logger = logging.getLogger(__name__)

#: the entry-point group installed plugins declare themselves in
GROUP = "attnlens.plugins"

_lock = threading.RLock()
_REGISTRIES: list[Any] = []  # every Registry made (attnlens.core.registry tracks each here)
_loaded: set[tuple[str, str]] = set()  # (entry point name, value) already loaded (or tried)
_state = {"done": False, "loading": False}


def track(registry: Any) -> None:
    """Add a registry to those :func:`registries` lists (each :class:`~attnlens.core.registry.Registry` does)."""
    _REGISTRIES.append(registry)


def registries() -> tuple[Any, ...]:
    """Every registry made so far (steering methods, attribution methods, runtimes, studies, views, ...)."""
    return tuple(_REGISTRIES)


def _register(value: Any, where: str) -> None:
    """Register ``value`` in the registry of its kind (a function is called, a list taken item by item)."""
    if isinstance(value, ModuleType):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _register(item, where)
        return
    for registry in registries():
        if registry.accepts(value):
            registry.register(value, replace=False)
            return
    if callable(value):
        value()
        return
    raise PluginError(f"plugin {where}: {type(value).__name__} is not a module, a function or an entry of a "
                      "registry (a steering method, an attribution method, a study, a runtime, a steering profile)")


def load_plugin(spec: str) -> Any:
    """Load one plugin: ``"package.module"`` or ``"package.module:attr"`` (see the module docstring).

    Returns what it named; a plugin that cannot be imported or registered raises a PluginError naming it."""
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError(f"a plugin is named by 'package.module' or 'package.module:attr', got {spec!r}")
    spec = spec.strip()
    module_name, _, attr = spec.partition(":")
    try:
        value: Any = importlib.import_module(module_name.strip())
    except ImportError as exc:
        raise PluginError(f"plugin {spec!r}: cannot import {module_name!r} ({exc})") from None
    except AttnlensError as exc:
        raise PluginError(f"plugin {spec!r}: {exc}") from None
    except Exception as exc:  # the plugin's own code failed while importing
        raise PluginError(f"plugin {spec!r}: importing it raised {type(exc).__name__}: {exc}") from exc
    for part in attr.strip().split(".") if attr.strip() else ():
        try:
            value = getattr(value, part)
        except AttributeError:
            raise PluginError(f"plugin {spec!r}: {module_name!r} has no attribute {attr!r}") from None
    try:
        _register(value, repr(spec))
    except PluginError:
        raise
    except AttnlensError as exc:
        raise PluginError(f"plugin {spec!r}: {exc}") from None
    logger.debug("loaded plugin %s", spec)
    return value


def installed() -> list[importlib.metadata.EntryPoint]:
    """The entry points of the ``attnlens.plugins`` group, in the installed packages."""
    return list(importlib.metadata.entry_points(group=GROUP))


def load_installed() -> list[str]:
    """Load every installed plugin not loaded yet; returns the names of those loaded now.

    One that fails is logged as a warning (naming it and why) and skipped."""
    done = []
    with _lock:
        for entry in installed():
            key = (entry.name, entry.value)
            if key in _loaded:
                continue
            _loaded.add(key)
            value = entry.value.split("[", 1)[0].strip()  # an entry point's extras are not part of the target
            try:
                load_plugin(value)
            except PluginError as exc:
                logger.warning("the installed plugin %r (entry point of %s) was not loaded: %s", entry.name, GROUP, exc)
                continue
            done.append(entry.name)
    return done


def load_installed_once() -> None:
    """:func:`load_installed` the first time it is called in the process (the registries call it before they
    are first read); a registry read while the plugins load (by a plugin's own module) does not wait for them."""
    if _state["done"]:
        return
    with _lock:
        if _state["done"] or _state["loading"]:
            return
        _state["loading"] = True
        try:
            load_installed()
        finally:
            _state["loading"] = False
            _state["done"] = True


def load_plugins(names: Iterable[str] = ()) -> list[Any]:
    """The installed plugins (those not loaded yet), then each plugin ``names`` gives (``--plugin``), in order;
    returns what each of ``names`` named. A named plugin that fails raises a PluginError naming it."""
    load_installed()
    _state["done"] = True
    return [load_plugin(name) for name in names]
