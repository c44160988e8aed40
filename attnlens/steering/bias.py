"""The one mechanism: add a bias to pre-softmax attention scores of chosen keys.

A :class:`BiasPlan` says *which key positions* get *which additive value* in
*which heads* of *which layers*, optionally per batch row. It compiles to one
tensor per layer, shaped ``[rows | 1, heads | 1, 1, length]``, that a single
hook on ``blocks.{l}.attn.hook_attn_scores`` adds to the scores' first
``length`` key columns in one operation. Positions are absolute, so the same
tensor serves the prefill pass (``[batch, head, query, key]``) and every
KV-cached decoding step (``[batch, head, 1, key]``); keys past ``length``
(generated tokens) are never biased.

:func:`apply_bias` installs a plan for the duration of a ``with`` block and
removes its hooks on exit, also when the block raises. Plans compose: nested or
sibling ``apply_bias`` blocks each add their own term, so GUIDE and PASTA active
together add up.

A block's plan belongs to the block's context (a :class:`contextvars.ContextVar`):
one :class:`Dispatch` hook per steered layer, shared by every block on the model
(counted, and removed with the last), adds only the plans active where the
forward pass runs (the reference path). The block also records its plan as an
active steering (:func:`attnlens.steering.kinds.recorded`), which is what the
fused attention of a direct run adds. Another thread's forward of the same model
is never steered.

Large biases stay exact in every precision: they are added relative to the
largest bias a query can see (the softmax ignores a per-query constant), with
differences beyond :data:`GAP` (which already leave no weight) shortened, so a
constant bias over the whole prompt changes nothing and half precision never
overflows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, ContextManager

import torch

from ..core.model import Model
from ..core import hooks
from ..core.concurrency import PerModel
from ..core.errors import AttnlensError, SpanError
from ..core.model import model_device, model_shape
from ..core.validate import LayerSpec, check_bias, is_int, plain_scalar, resolve_heads, resolve_layers
from .kinds import KeyBias, recorded
from .scores import (  # noqa: F401 - re-exported: the bias and how it is added to scores
    FLOOR,
    GAP,
    PLAIN,
    LayerBias,
    _ScoreBias,
    add_to_scores,
    compress,
    is_plain,
    key_bias,
    relative_key_bias,
    wide_dtype,
)

logger = logging.getLogger(__name__)

SCORE_HOOK = hooks.SCORES


def complement(
    spans: Sequence[tuple[int, int]], length: int | None
) -> list[tuple[int, int | None]]:
    """The ranges of ``[0, length)`` outside ``spans`` (which may overlap or be unsorted).

    ``length=None`` means "to the end of the prompt": the last range ends in ``None``.
    """
    limit = float("inf") if length is None else length
    covered = sorted((max(0, s), min(limit, e)) for s, e in spans)
    out: list[tuple[int, int | None]] = []
    cursor = 0
    for s, e in covered:
        if s > cursor:
            out.append((cursor, int(s)))
        cursor = max(cursor, int(e))
    if length is None:
        out.append((cursor, None))
    elif cursor < length:
        out.append((cursor, length))
    return out


@dataclass(frozen=True)
class BiasTerm:
    """Add ``value`` to keys ``[start, end)`` in ``heads`` (None: all) of ``layers``, row ``row`` (None: all).

    ``end=None`` means "to the end of the prompt": the key count of the last full
    (uncached) forward pass, so generated keys stay unbiased.
    """

    start: int
    end: int | None
    value: float
    layers: tuple[int, ...]
    heads: tuple[int, ...] | None = None
    row: int | None = None


@dataclass
class BiasPlan(KeyBias):
    """A set of additive attention-score biases for one model, built with :meth:`add` (a :class:`KeyBias`)."""

    name = "bias"

    n_layers: int
    n_heads: int
    terms: list[BiasTerm] = field(default_factory=list)
    #: the batch size the plan is for, when some rows may have no term (set by :meth:`shifted`)
    n_rows: int | None = None

    @classmethod
    def for_model(cls, model: Model) -> "BiasPlan":
        n_layers, n_heads = model_shape(model)
        return cls(n_layers, n_heads)

    def add(
        self,
        start: int,
        end: int | None,
        value: float,
        *,
        layers: LayerSpec = "all",
        heads: Iterable[int] | None = None,
        row: int | None = None,
    ) -> "BiasPlan":
        """Add one term (``end=None``: to the end of the prompt); returns the plan so calls chain."""
        start, end = plain_scalar(start), plain_scalar(end)
        for name, v in (("start", start), ("end", end)):
            if v is None and name == "end":
                continue
            if not is_int(v):
                raise SpanError(f"span {name} {v!r} is not an integer")
        if start < 0 or (end is not None and end <= start):
            raise SpanError(f"span [{start}, {end}) is empty or negative")
        value = check_bias(value)
        if row is not None and (not is_int(row) or row < 0):
            raise AttnlensError(f"row {row!r} is not a non-negative integer")
        if row is not None and self.n_rows is not None and row >= self.n_rows:
            raise AttnlensError(f"row {row} is past the plan's batch of {self.n_rows} row"
                                f"{'s' if self.n_rows != 1 else ''} (rows count from 0)")
        resolved = resolve_layers(layers, self.n_layers)
        head_sel = resolve_heads(heads, self.n_heads)
        if resolved and value != 0.0:
            self.terms.append(BiasTerm(start, end, value, resolved, head_sel, row))
        return self

    def extend(self, other: "BiasPlan") -> "BiasPlan":
        if (other.n_layers, other.n_heads) != (self.n_layers, self.n_heads):
            raise AttnlensError("cannot merge plans built for different model shapes")
        self.terms.extend(other.terms)
        return self

    def shifted(self, offsets: Sequence[int]) -> "BiasPlan":
        """The plan for a left-padded batch: row ``r``'s positions move right by ``offsets[r]``.

        Terms for every row become one term per row; the result is per-row.
        """
        plan = BiasPlan(self.n_layers, self.n_heads, n_rows=len(offsets))
        for t in self.terms:
            if t.row is not None and t.row >= len(offsets):
                raise AttnlensError(f"the plan has a term for row {t.row}; the batch has {len(offsets)} rows")
            rows = range(len(offsets)) if t.row is None else [t.row]
            for r in rows:
                o = offsets[r]
                end = None if t.end is None else t.end + o
                plan.terms.append(BiasTerm(t.start + o, end, t.value, t.layers, t.heads, r))
        return plan

    def select_rows(self, start: int, count: int) -> "BiasPlan":
        """The part of the plan for rows ``[start, start + count)``, renumbered from 0."""
        out = BiasPlan(self.n_layers, self.n_heads)
        for t in self.terms:
            if t.row is None:
                out.terms.append(t)
            elif start <= t.row < start + count:
                out.terms.append(replace(t, row=t.row - start))
        if any(t.row is not None for t in out.terms):
            out.n_rows = count
        return out

    def install(self, model: Model) -> ContextManager["BiasPlan"]:
        """Install the plan on ``model`` for a ``with`` block (:func:`apply_bias`)."""
        return apply_bias(model, self)

    @classmethod
    def stack(cls, plans: Sequence["BiasPlan"]) -> "BiasPlan":
        """One per-row plan for a batch: row ``r`` gets ``plans[r]``'s terms (each plan for all rows)."""
        if not plans:
            raise AttnlensError("no plans to stack")
        out = cls(plans[0].n_layers, plans[0].n_heads, n_rows=len(plans))
        for r, plan in enumerate(plans):
            if (plan.n_layers, plan.n_heads) != (out.n_layers, out.n_heads):
                raise AttnlensError("cannot stack plans built for different model shapes")
            if plan.rows is not None:
                raise AttnlensError(f"plan {r} is already per-row; only all-row plans stack")
            out.terms.extend(BiasTerm(t.start, t.end, t.value, t.layers, t.heads, r) for t in plan.terms)
        return out

    @property
    def length(self) -> int:
        """One past the last key position with a fixed bias (open terms count their start)."""
        return max((t.start if t.end is None else t.end for t in self.terms), default=0)

    @property
    def rows(self) -> int | None:
        """The number of rows the plan needs (None when every term applies to all rows)."""
        rows = [t.row + 1 for t in self.terms if t.row is not None]
        if self.n_rows is not None and rows:
            rows.append(self.n_rows)
        return max(rows) if rows else None

    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({layer for t in self.terms for layer in t.layers}))

    def compile(
        self, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> dict[int, "LayerBias"]:
        """One :class:`LayerBias` per layer that has any term."""
        rows = self.rows or 1
        length = self.length
        out: dict[int, LayerBias] = {}
        for layer in self.layers():
            terms = [t for t in self.terms if layer in t.layers]
            heads = self.n_heads if any(t.heads is not None for t in terms) else 1
            fixed = torch.zeros(rows, heads, 1, length, dtype=torch.float64)
            tail = None
            for t in terms:
                rsel = slice(None) if t.row is None else slice(t.row, t.row + 1)
                hsel = slice(None) if t.heads is None else list(t.heads)
                fixed[rsel, hsel, :, t.start : t.end if t.end is not None else length] += t.value
                if t.end is None:
                    if tail is None:
                        tail = torch.zeros(rows, heads, 1, 1, dtype=torch.float64)
                    tail[rsel, hsel] += t.value
            magnitude = float(fixed.abs().max()) if fixed.numel() else 0.0
            if tail is not None:
                magnitude = max(magnitude, float(tail.abs().max()))
            out[layer] = LayerBias(
                fixed.to(device=device, dtype=dtype),
                None if tail is None else tail.to(device=device, dtype=dtype),
                magnitude,
            )
        return out


# ----------------------------------------------------------------------------- installation

#: the bias blocks active in this context (thread or task): what the dispatchers add
_active: ContextVar[tuple["_Block", ...]] = ContextVar("attnlens_active_biases", default=())


class _ModelHooks:
    """One model's dispatchers (one per steered layer), installed while any block uses the layer."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.users: dict[int, int] = {}
        self.installed: dict[int, tuple[Any, Any]] = {}  # layer -> (hook point, handle)


_hooks_of = PerModel(_ModelHooks)


@dataclass(frozen=True, eq=False)
class _Block:
    """One ``apply_bias`` block: its model's dispatchers and its per-layer biases."""

    owner: _ModelHooks
    layers: dict[int, _ScoreBias]


class Dispatch:
    """The one hook attnlens keeps on a layer's score point while any bias block steers that layer.

    It adds the biases of the blocks active in the *current* context only, so a
    forward another thread or task runs meanwhile sees none of them.
    """

    __slots__ = ("owner", "layer")

    def __init__(self, owner: _ModelHooks, layer: int) -> None:
        self.owner = owner
        self.layer = layer

    def active(self) -> list[_ScoreBias]:
        out = []
        for block in _active.get():
            if block.owner is self.owner:
                found = block.layers.get(self.layer)
                if found is not None:
                    out.append(found)
        return out

    def __call__(self, scores: torch.Tensor, hook: Any = None) -> torch.Tensor | None:
        biases = self.active()
        if not biases:
            return None
        return add_to_scores(scores, biases)

    def __repr__(self) -> str:  # TransformerLens names hooks by repr
        return f"attnlens.bias(layer={self.layer})"


#: attnlens' own record of the dispatchers it installed, by the torch hook id of each: how the fused
#: path tells attnlens' hooks from a user's (which send a layer to the reference path), never by reading
#: a hook wrapper's closure. The biases it adds come from the active steerings (kinds.active_at).
_dispatchers: dict[int, Dispatch] = {}


def dispatcher(hook_id: int) -> Dispatch | None:
    """The bias dispatcher attnlens installed under torch hook id ``hook_id`` (None: not one of ours)."""
    return _dispatchers.get(hook_id)


def _acquire(model: Model, owner: _ModelHooks, layers: Iterable[int]) -> None:
    from ..core import _internals as tl

    points = model.hook_dict
    with owner.mutex:
        done: list[int] = []
        try:
            for layer in layers:
                if owner.users.get(layer, 0) == 0:
                    point = points[SCORE_HOOK.format(layer=layer)]
                    dispatch = Dispatch(owner, layer)
                    handle = tl.add_lens_hook(point, dispatch)
                    owner.installed[layer] = (point, handle)
                    _dispatchers[tl.lens_hook_id(handle)] = dispatch
                owner.users[layer] = owner.users.get(layer, 0) + 1
                done.append(layer)
        except BaseException:
            _release_locked(owner, done)
            raise


def _release_locked(owner: _ModelHooks, layers: Iterable[int]) -> None:
    from ..core import _internals as tl

    for layer in layers:
        owner.users[layer] -= 1
        if owner.users[layer] == 0:
            del owner.users[layer]
            point, handle = owner.installed.pop(layer)
            _dispatchers.pop(tl.lens_hook_id(handle), None)
            tl.remove_lens_hook(point, handle)


@contextmanager
def apply_bias(model: Model, plan: BiasPlan) -> Iterator[BiasPlan]:
    """Install ``plan`` on ``model`` for the ``with`` block; hooks are removed on exit.

    The plan acts on forward passes run in this context: the block's thread, and
    tasks or ``asyncio.to_thread`` calls started inside the block (they copy the
    context); another thread's forward of the same model meanwhile is not steered.
    One dispatcher hook per steered layer is shared by every block on the model and
    removed when the last block using it ends.

    Also makes sure cached decoding through a TransformerLens bridge inside the block
    sees its KV cache on every transformers release attnlens supports
    (:func:`attnlens.core._internals.mend_kv_cache_argument`).
    """
    from ..core._internals import mend_kv_cache_argument

    mend_kv_cache_argument()
    n_layers, n_heads = model_shape(model)
    if (plan.n_layers, plan.n_heads) != (n_layers, n_heads):
        raise AttnlensError(
            f"the plan was built for {plan.n_layers} layers x {plan.n_heads} heads; "
            f"the model has {n_layers} x {n_heads}"
        )
    device = model_device(model)
    compiled = plan.compile(device=device, dtype=torch.float32)
    logger.debug("steering %d layers", len(compiled))
    if not compiled:
        yield plan
        return
    layers = {layer: _ScoreBias(bias, layer) for layer, bias in compiled.items()}
    points = getattr(model, "hook_dict", None)
    if points is None or any(SCORE_HOOK.format(layer=l) not in points for l in layers):
        # a model of another kind, or names it resolves itself: its own hooks() for the block, whose
        # dispatchers (an owner of their own) add this block's plan only
        block = _Block(_ModelHooks(), layers)
        token = _active.set(_active.get() + (block,))
        try:
            with model.hooks(fwd_hooks=[(SCORE_HOOK.format(layer=l), Dispatch(block.owner, l)) for l in layers]):
                yield plan
        finally:
            _leave(token, block)
        return
    owner = _hooks_of(model)
    block = _Block(owner, layers)
    _acquire(model, owner, layers)
    token = _active.set(_active.get() + (block,))
    try:
        # the fused attention reads the plan from here (this context's only); the dispatchers add it on
        # the reference path
        with recorded(plan, {points[SCORE_HOOK.format(layer=l)]: bias for l, bias in layers.items()}):
            yield plan
    finally:
        _leave(token, block)
        with owner.mutex:
            _release_locked(owner, layers)


def _leave(token: Any, block: _Block) -> None:
    try:
        _active.reset(token)
    except ValueError:  # left in another context than it was entered in
        _active.set(tuple(b for b in _active.get() if b is not block))
