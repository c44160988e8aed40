"""How a compiled bias meets the attention scores: one layer's bias, summed over keys and added.

Small biases are added as they are. Large ones are added relative to the largest
bias a query can see (the softmax ignores a per-query constant), with differences
beyond :data:`GAP` shortened, so a constant bias over the whole prompt changes
nothing and half precision never overflows. The hook path (:func:`add_to_scores`)
and the fused path (:func:`key_bias`, :func:`relative_key_bias`) share these.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float

from ..core.errors import AttnlensError, SpanError


@dataclass
class LayerBias:
    """A layer's compiled bias: ``fixed`` over keys ``[0, length)``, shaped
    ``[rows|1, heads|1, 1, length]``, and ``tail`` (``[rows|1, heads|1, 1, 1]``,
    or None) added to every further prompt key. ``magnitude`` bounds every value's size."""

    fixed: Float[torch.Tensor, "rows heads 1 key"]
    tail: Float[torch.Tensor, "rows heads 1 1"] | None = None
    magnitude: float = float("inf")

    def to(self, device: Any, dtype: torch.dtype) -> "LayerBias":
        tail = None if self.tail is None else self.tail.to(device=device, dtype=dtype)
        return LayerBias(self.fixed.to(device=device, dtype=dtype), tail, self.magnitude)


#: biases whose sizes add up to at most this are added to the scores as they are
PLAIN = 64.0
#: a difference of this much between two keys' biases already gives the lower one no weight
#: (exp(-1000) is 0 in float64): larger differences are shortened to it
GAP = 1000.0
#: the lowest relative bias ever added (keeps half precision finite)
FLOOR = 1.0e4


class _ScoreBias:
    """One call's compiled bias for one layer, and the prompt length its open-ended terms run to.

    A full pass (as many queries as keys) sets the prompt length; cached decoding
    steps (one query, more keys) keep it. The length is kept per thread, so the
    calls of one ``with`` block that run in several threads do not mix.
    """

    __slots__ = ("bias", "layer", "_local", "_converted")

    def __init__(self, bias: LayerBias, layer: int) -> None:
        self.bias = bias
        self.layer = layer
        self._local = threading.local()
        self._converted: dict[tuple[Any, Any], LayerBias] = {}

    @property
    def prompt_len(self) -> int | None:
        return getattr(self._local, "prompt_len", None)

    @prompt_len.setter
    def prompt_len(self, value: int | None) -> None:
        self._local.prompt_len = value

    def on(self, device: Any, dtype: torch.dtype) -> LayerBias:
        bias = self.bias
        if bias.fixed.device == device and bias.fixed.dtype == dtype:
            return bias
        key = (device, dtype)
        found = self._converted.get(key)
        if found is None:
            found = self._converted[key] = bias.to(device, dtype)
        return found

    def __call__(self, scores: torch.Tensor, hook: Any = None) -> torch.Tensor:
        """Add this bias alone to ``scores`` (``[batch, head, query, key]``)."""
        return add_to_scores(scores, [self])

    def __repr__(self) -> str:
        return f"attnlens.bias(layer={self.layer}, length={self.bias.fixed.shape[-1]})"


def key_bias(
    biases: Sequence[_ScoreBias], batch: int, queries: int, keys: int, device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor | None:
    """The sum of ``biases`` over ``keys`` key positions: ``[rows|1, heads|1, keys]`` in ``dtype``.

    A full pass sets the prompt length that open-ended terms run to; cached steps keep it.
    """
    total = None
    for hook in biases:
        bias = hook.on(device, dtype)
        if bias.fixed.shape[0] not in (1, batch):
            raise AttnlensError(
                f"the bias plan has {bias.fixed.shape[0]} rows but layer {hook.layer} sees a batch of {batch}"
            )
        length = bias.fixed.shape[-1]
        if queries == keys or hook.prompt_len is None:
            hook.prompt_len = keys
            if keys < length:
                raise SpanError(f"a bias span ends at position {length} but the sequence has {keys} tokens")
        n = min(keys, length)
        tail_end = min(keys, hook.prompt_len) if bias.tail is not None else n
        if n == keys and tail_end <= n:
            vec = bias.fixed[:, :, 0, :n]
        else:
            vec = bias.fixed.new_zeros(bias.fixed.shape[:2] + (keys,))
            vec[..., :n] = bias.fixed[:, :, 0, :n]
            if tail_end > n:
                vec[..., n:tail_end] += bias.tail[:, :, 0]
        if total is None:
            total = vec
        else:
            shape = torch.broadcast_shapes(total.shape, vec.shape)
            total = total.expand(shape) + vec
    return total


def is_plain(biases: Sequence[_ScoreBias]) -> bool:
    """Whether the biases are small enough to add to scores of any precision as they are."""
    return sum(b.bias.magnitude for b in biases) <= PLAIN


def wide_dtype(device: torch.device) -> torch.dtype:
    """The precision large biases are summed in (float64 where the device has it)."""
    return torch.float32 if device.type == "mps" else torch.float64


def compress(total: torch.Tensor) -> torch.Tensor:
    """Values with the same order whose differences below :data:`GAP` are kept and larger ones shortened to it.

    Every softmax over them gives what it gives over ``total`` (a difference of
    ``GAP`` already leaves no weight), and the values stay in a range every
    precision holds.
    """
    lo, hi = total.aminmax()
    if float(hi - lo) <= GAP:
        return total - hi
    values, inverse = torch.unique(total, sorted=True, return_inverse=True)
    steps = values.diff().clamp_max(GAP)
    mapped = torch.cat([steps.new_zeros(1), steps.cumsum(0)])
    return (mapped - mapped[-1])[inverse]


def relative_key_bias(total: torch.Tensor) -> torch.Tensor:
    """``total`` (``[rows, heads, keys]``) made safe for a fused kernel: compressed, each row's largest
    value 0, nothing below ``-FLOOR``; softmax over any subset of keys is unchanged."""
    vals = compress(total)
    return (vals - vals.amax(-1, keepdim=True)).clamp_min(-FLOOR)


def add_to_scores(scores: torch.Tensor, biases: Sequence[_ScoreBias]) -> torch.Tensor:
    """``scores`` (``[batch, head, query, key]``) plus the biases, out of place.

    Small biases are added as they are. Large ones are added relative to the
    largest bias each query can see (keys ``0..k-q+i`` for query ``i``; a
    per-query constant, which the softmax ignores), compressed (:func:`compress`)
    and never below ``-FLOOR``: a constant bias over every key changes nothing,
    and half precision stays finite.
    """
    batch, queries, keys = scores.shape[0], scores.shape[-2], scores.shape[-1]
    if is_plain(biases):
        total = key_bias(biases, batch, queries, keys, scores.device, torch.float32)
        return scores + total[:, :, None, :].to(scores.dtype)
    total = key_bias(biases, batch, queries, keys, scores.device, wide_dtype(scores.device))
    vals = compress(total)
    peak = vals.cummax(-1).values[..., keys - queries :]  # [rows, heads, query]
    rel = (vals[..., None, :] - peak[..., :, None]).clamp_min(-FLOOR)
    return scores + rel.to(scores.dtype)
