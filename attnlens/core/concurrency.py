"""Sharing one model between threads and asyncio tasks.

Three tools, used by every attnlens entry point that runs a model:

- **call scopes** (:func:`call_scope`, :func:`scoped`): a hook that belongs to one call
  acts only in that call's context (a :class:`contextvars.ContextVar`), so a forward
  pass another thread runs on the same model at the same time is left as it is;
- **a per-model lock** (:func:`exclusive`): attnlens' runs of one model take turns
  (runs of different models go on in parallel). While a run holds it, a forward of
  the model that another thread starts waits for it (a guard in front of the model's
  ``forward``, installed only while some run holds the lock or a guarded forward runs),
  so nobody sees the modules a direct run swaps (:mod:`attnlens.runtime.direct`). The
  lock and the guard are given up on every way out of a run and of a forward, a
  KeyboardInterrupt included;
- **seeded sampling** (:func:`seeded`): torch's samplers draw from the process-wide
  generator, so sampling holds one process-wide lock, and a seeded call runs in a
  forked random state (:func:`torch.random.fork_rng`), which it leaves as it was.

New threads start with an empty context; ``asyncio.to_thread``, ``asyncio`` tasks and
``contextvars.copy_context().run`` copy the caller's, so a call started inside a
``with attnlens.guide(...)`` block that way runs inside it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- call scopes

_scopes: ContextVar[frozenset[int]] = ContextVar("attnlens_call_scopes", default=frozenset())
_next_scope = itertools.count(1)


@contextmanager
def call_scope() -> Iterator[int]:
    """Open a scope for the ``with`` block (in this context only); yields its token."""
    token = next(_next_scope)
    reset = _scopes.set(_scopes.get() | {token})
    try:
        yield token
    finally:
        try:
            _scopes.reset(reset)
        except ValueError:  # exited in another context than it was entered in
            _scopes.set(_scopes.get() - {token})


def in_scope(token: int) -> bool:
    return token in _scopes.get()


class Scoped:
    """A hook that calls ``fn`` only inside the scope ``token`` (elsewhere: does nothing, returns None)."""

    __slots__ = ("fn", "token", "__weakref__")

    def __init__(self, fn: Any, token: int) -> None:
        self.fn = fn
        self.token = token

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.token in _scopes.get():
            return self.fn(*args, **kwargs)
        return None

    def __repr__(self) -> str:  # TransformerLens names hooks by repr
        fn = getattr(self.fn, "func", self.fn)  # a partial: its function (a partial's repr can be slow)
        return f"attnlens.scoped({getattr(fn, '__qualname__', type(fn).__name__)})"


def scoped(hooks: list[tuple[Any, Any]], token: int) -> list[tuple[Any, Any]]:
    """``[(name, fn)]`` with every ``fn`` acting only inside scope ``token``."""
    return [(name, Scoped(fn, token)) for name, fn in hooks]


# ----------------------------------------------------------------------------- per-model lock


class _ModelState:
    """One model's lock, the depth of the run holding it, and the forward guard."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.depth = 0  # nesting of exclusive() in the owning thread
        self.mutex = threading.Lock()  # guards the fields below
        self.inflight = 0  # forwards inside the guard
        self.guard: Any = None  # the guarded forward while installed
        self.replaced: Any = None  # the instance's own ``forward`` the guard stands in front of, if it had one


def guard_hook_ids() -> set[int]:
    """Handle ids of hooks :func:`exclusive` puts on a model: none (it guards the model's ``forward`` itself,
    which computes nothing else). Kept for callers that exclude these ids from a check of a model's hooks."""
    return set()


class PerModel:
    """State kept per model for as long as the model lives (a weak table), made on first use."""

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.table: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()
        self.mutex = threading.Lock()

    def __call__(self, model: Any) -> Any:
        with self.mutex:
            found = self.table.get(model)
            if found is None:
                found = self.table[model] = self.factory()
            return found


_state = PerModel(_ModelState)


def _install_guard(model: Any, state: _ModelState) -> None:
    """Put a guarded ``forward`` in front of the model's own (caller holds ``state.mutex``).

    The guard is a ``try``/``finally`` around the forward, not a pair of forward hooks: torch runs a
    module's ``always_call`` forward hooks only when the forward raises an ``Exception``, so a
    KeyboardInterrupt (or any other ``BaseException``) inside a forward would skip the releasing hook and
    leave the lock held for good; a ``finally`` releases it on every way out.
    """
    if state.guard is not None or not isinstance(model, torch.nn.Module):
        return
    attributes = vars(model)
    replaced = attributes.get("forward")  # an instance-level forward of someone else's (accelerate's)
    inner = model.forward  # what a call runs now: that one, or the class's forward bound to the model

    def guarded_forward(*args: Any, **kwargs: Any) -> Any:
        with state.mutex:
            state.inflight += 1
        try:
            state.lock.acquire()
        except BaseException:  # interrupted while waiting: nothing taken
            _leave(model, state)
            raise
        try:
            return inner(*args, **kwargs)
        finally:
            state.lock.release()
            _leave(model, state)

    guarded_forward.__wrapped__ = inner  # type: ignore[attr-defined]  # inspect.signature sees the model's
    guarded_forward.__doc__ = getattr(inner, "__doc__", None)
    attributes["forward"] = guarded_forward  # past any __setattr__ of the model's class
    state.guard, state.replaced = guarded_forward, replaced


def _leave(model: Any, state: _ModelState) -> None:
    with state.mutex:
        state.inflight -= 1
        if state.depth == 0 and state.inflight == 0:
            _remove_guard(model, state)


def _remove_guard(model: Any, state: _ModelState) -> None:
    """Take the guarded forward away (caller holds ``state.mutex``). A ``forward`` someone put on the
    instance after the guard stays (it may call the guard, which then only takes its turn)."""
    if state.guard is None:
        return
    attributes = vars(model)
    if attributes.get("forward") is state.guard:
        if state.replaced is None:
            del attributes["forward"]
        else:
            attributes["forward"] = state.replaced
    state.guard = state.replaced = None


@contextmanager
def exclusive(model: Any) -> Iterator[None]:
    """Hold ``model`` for the ``with`` block: other attnlens runs of it, and forwards of it that other
    threads start meanwhile, wait until the block ends. Re-entrant within one thread.

    A forward of your own that is already running when the block starts is not waited for;
    wrap your own forwards of a shared model in this block to take turns with attnlens.
    """
    state = _state(model)
    state.lock.acquire()
    try:
        with state.mutex:
            state.depth += 1
            if state.depth == 1:
                _install_guard(model, state)
        yield
    finally:
        with state.mutex:
            state.depth -= 1
            if state.depth == 0 and state.inflight == 0:
                _remove_guard(model, state)
        state.lock.release()


# ----------------------------------------------------------------------------- sampling

_sampling = threading.RLock()


@contextmanager
def seeded(seed: int | None, device: Any = None, *, sampling: bool = True) -> Iterator[None]:
    """Run the block's sampling on its own: under the process-wide sampling lock, and with
    ``seed`` in a forked random state (restored on exit) so that the same seed gives the same
    samples whatever runs beside it. Without sampling and seed, does nothing."""
    if not sampling and seed is None:
        yield
        return
    with _sampling:
        if seed is None:
            yield
            return
        device = torch.device(device) if device is not None else torch.device("cpu")
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
