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
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
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
