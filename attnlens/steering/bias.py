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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float

from ..core.model import Model
from ..core import hooks
from ..core.errors import AttnlensError, SpanError
from ..core.model import model_device, model_dtype, model_shape
from ..core.validate import LayerSpec, check_bias, is_int, plain_scalar, resolve_heads, resolve_layers

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
class BiasPlan:
    """A set of additive attention-score biases for one model, built with :meth:`add`."""

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
            out[layer] = LayerBias(
                fixed.to(device=device, dtype=dtype),
                None if tail is None else tail.to(device=device, dtype=dtype),
            )
        return out


@dataclass
class LayerBias:
    """A layer's compiled bias: ``fixed`` over keys ``[0, length)``, shaped
    ``[rows|1, heads|1, 1, length]``, and ``tail`` (``[rows|1, heads|1, 1, 1]``,
    or None) added to every further prompt key."""

    fixed: Float[torch.Tensor, "rows heads 1 key"]
    tail: Float[torch.Tensor, "rows heads 1 1"] | None = None

    def to(self, device: Any, dtype: torch.dtype) -> "LayerBias":
        tail = None if self.tail is None else self.tail.to(device=device, dtype=dtype)
        return LayerBias(self.fixed.to(device=device, dtype=dtype), tail)


class _ScoreBias:
    """The hook: adds a compiled bias to one layer's pre-softmax attention scores.

    A full pass (as many queries as keys) sets the prompt length that open-ended
    terms run to; cached decoding steps (one query, more keys) keep it.
    """

    __slots__ = ("bias", "layer", "prompt_len")

    def __init__(self, bias: LayerBias, layer: int) -> None:
        self.bias = bias
        self.layer = layer
        self.prompt_len: int | None = None

    def __call__(self, scores: torch.Tensor, hook: Any = None) -> torch.Tensor:
        bias = self.bias
        if bias.fixed.device != scores.device or bias.fixed.dtype != scores.dtype:
            bias = self.bias = bias.to(scores.device, scores.dtype)
        batch, queries, keys = scores.shape[0], scores.shape[-2], scores.shape[-1]
        if bias.fixed.shape[0] not in (1, batch):
            raise AttnlensError(
                f"the bias plan has {bias.fixed.shape[0]} rows but layer {self.layer} sees a batch "
                f"of {batch}"
            )
        length = bias.fixed.shape[-1]
        if queries == keys or self.prompt_len is None:
            self.prompt_len = keys
            if keys < length:
                raise SpanError(
                    f"a bias span ends at position {length} but the sequence has {keys} tokens"
                )
        n = min(keys, length)
        tail_end = min(keys, self.prompt_len) if bias.tail is not None else n
        if n == keys and tail_end <= n:
            return scores + bias.fixed[..., :n]
        # out of place, so a tensor another hook kept a reference to is left as it was
        out = scores.clone()
        out[..., :n] += bias.fixed[..., :n]
        if tail_end > n:
            out[..., n:tail_end] += bias.tail
        return out

    def __repr__(self) -> str:  # TransformerLens names hooks by repr
        return f"attnlens.bias(layer={self.layer}, length={self.bias.fixed.shape[-1]})"


@contextmanager
def apply_bias(model: Model, plan: BiasPlan) -> Iterator[BiasPlan]:
    """Install ``plan`` on ``model`` for the ``with`` block; hooks are removed on exit.

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
    hooks = [
        (SCORE_HOOK.format(layer=layer), _ScoreBias(bias, layer))
        for layer, bias in plan.compile(device=device, dtype=model_dtype(model)).items()
    ]
    logger.debug("installing %d attention-score bias hooks", len(hooks))
    if not hooks:
        yield plan
        return
    with model.hooks(fwd_hooks=hooks):
        yield plan

