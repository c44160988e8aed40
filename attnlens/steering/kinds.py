"""The steering contract: what a steering method's :meth:`~attnlens.steering.registry.SteeringMethod.steering` returns.

Every steering is a :class:`Steering`: it says how many batch rows it is for
(:attr:`~Steering.rows`), follows a left-padded batch (:meth:`~Steering.shifted`),
keeps the rows of one chunk of a batch (:meth:`~Steering.select_rows`) and is
installed on a model for a ``with`` block (:meth:`~Steering.install`). It is one
of three kinds, which the runtimes tell apart by type:

- :class:`KeyBias`: a static per-key bias, compiled to one tensor per layer that
  is added to the pre-softmax scores (:class:`~attnlens.steering.bias.BiasPlan`:
  GUIDE, PASTA, InstABoost). The fused path adds it; the continuous batcher and
  the server stack the plans of many rows into one.
- :class:`SpanReweight`: an edit computed during the run on a layer's scores, its
  pattern or the logits (:class:`~attnlens.steering.edits.RunEdit`: SpotLight). A
  pattern edit that multiplies its span keys' weights by a factor and renormalises
  says so with a ``span_factor``, and the fused path then runs it.
- :class:`DecodingOverride`: a steering that runs the decoding steps itself
  (:class:`~attnlens.steering.spa_method.SpaSteering`: SPA's mixed logits); its
  :meth:`~DecodingOverride.bind` wraps a run and implements its ``generate``.

A method's ``steering()`` returns one of these or None (nothing to do for these
prompts); anything else is an :class:`~attnlens.core.errors.AttnlensError` naming
the method (:func:`checked`).

Installing a steering records it, with what it runs at each hook point it
steers, in a context variable (:func:`recorded`): the steerings active in this
call, which is what the fused attention of a direct run reads
(:func:`active_at`). The context variable belongs to the call that installed
the steering (its thread, and the tasks and threads it starts with a copy of its
context): a forward another thread runs at the same time never sees it. The
hooks a steering also installs are for the reference path (the bridge, or a
direct run's layer that materialises its scores); the fused path only checks
that every hook on a point is one attnlens installed, so that a user's own hook
still sends that layer to the reference path.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ContextManager, Optional

from ..core.errors import AttnlensError


class Steering(abc.ABC):
    """What every steering can do; subclass one of the three kinds below, never this class directly."""

    #: a short name for messages (a method's name)
    name = "steering"

    @property
    @abc.abstractmethod
    def rows(self) -> int | None:
        """How many batch rows the steering is for (None: every row alike)."""

    @abc.abstractmethod
    def shifted(self, offsets: Sequence[int]) -> "Steering":
        """The steering in the positions of a batch whose row ``r`` is left-padded by ``offsets[r]``."""

    @abc.abstractmethod
    def select_rows(self, start: int, count: int) -> "Steering":
        """The part of the steering for rows ``[start, start + count)``, renumbered from 0."""

    @abc.abstractmethod
    def install(self, model: Any) -> ContextManager[Any]:
        """A context manager that steers ``model``'s forward passes in the ``with`` block (this call's only)."""


class KeyBias(Steering):
    """A static per-key bias that compiles to scores: ``compile()`` gives one additive bias per layer."""

    @abc.abstractmethod
    def compile(self, *, device: Any = None, dtype: Any = None) -> dict[int, Any]:
        """One :class:`~attnlens.steering.scores.LayerBias` per steered layer."""


class SpanReweight(Steering):
    """An edit computed during the run on one hook point (scores, pattern or logits) of the span keys.

    ``span_factor`` (None, or a callable ``(share, seen) -> factor``) says the edit
    multiplies the span keys' weights by a factor and renormalises; the fused path
    then runs it without a score matrix.
    """

    span_factor: Any = None


class DecodingOverride(Steering):
    """A steering that runs the decoding steps of a generation itself."""

    @abc.abstractmethod
    def bind(self, run: Any) -> Any:
        """A run like ``run`` whose ``generate`` this steering implements."""


KINDS = (KeyBias, SpanReweight, DecodingOverride)


def kind_name(steering: Any) -> str:
    """``"KeyBias"``, ``"SpanReweight"`` or ``"DecodingOverride"`` for a steering, else its type's name."""
    for kind in KINDS:
        if isinstance(steering, kind):
            return kind.__name__
    return type(steering).__name__


def checked(made: Any, method: str) -> Optional[Steering]:
    """What steering method ``method`` returned, if it is None or one of the three kinds; else an AttnlensError."""
    if made is None or isinstance(made, KINDS):
        return made
    raise AttnlensError(
        f"steering method {method!r} returned a {type(made).__name__}; steering() must return None or a "
        "steering of one of the kinds in attnlens.steering.kinds: a KeyBias (a BiasPlan), a SpanReweight "
        "(a RunEdit) or a DecodingOverride"
    )


def describe(steering: Any) -> str:
    """A steering's name for messages."""
    return getattr(steering, "name", None) or type(steering).__name__


# ----------------------------------------------------------------------------- the active steerings


@dataclass(frozen=True, eq=False)
class Installed:
    """One installed steering and what it runs at each hook point it steers (keyed by the point itself)."""

    steering: Steering
    at: Mapping[Any, Any]


#: the steerings installed in this context (this call, and what it starts with a copy of its context)
_installed: ContextVar[tuple[Installed, ...]] = ContextVar("attnlens_installed_steerings", default=())


@contextmanager
def recorded(steering: Steering, at: Mapping[Any, Any]) -> Iterator[Installed]:
    """Record ``steering`` as active in this context for the ``with`` block; ``at`` maps each hook point
    (the module) it steers to what the fused attention runs there."""
    entry = Installed(steering, dict(at))
    token = _installed.set(_installed.get() + (entry,))
    try:
        yield entry
    finally:
        try:
            _installed.reset(token)
        except ValueError:  # left in another context than it was entered in
            _installed.set(tuple(e for e in _installed.get() if e is not entry))


def active() -> tuple[Installed, ...]:
    """The steerings installed in this context, oldest first."""
    return _installed.get()


def active_at(point: Any) -> list[Any]:
    """What the steerings installed in this context run at hook point ``point``, oldest first."""
    if point is None:
        return []
    return [entry.at[point] for entry in _installed.get() if point in entry.at]
