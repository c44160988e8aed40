"""Fused attention for long prompts: steering and Influence without a score matrix.

The reference path of a direct run (:mod:`attnlens.runtime.direct`) forms every steered
layer's ``[batch, head, query, key]`` scores so that the bias hooks on
``blocks.{l}.attn.hook_attn_scores`` can add to them. Every bias plan of
attnlens adds a number per *key* (per row and head), never per query, so it
folds exactly into the product ``q·k``: one column is appended to the queries
(value 1) and one to the keys (value ``b_j / scale``), and::

    scale * [q, 1]·[k, b_j / scale] = scale * q·k + b_j

Fused ``scaled_dot_product_attention`` with ``is_causal=True`` then applies the
bias inside the kernel, with no mask and no score matrix. PyTorch's fused CPU
kernel needs one head size for queries, keys and values, so the values get as
many columns too: zeros, or the running Influence chains. ``A·I`` (the
pattern times the chains) is an attention product with the chains as values,
so the same kernel call that computes the layer's output computes the
Influence update of every span and method, per head, without forming ``A``
(:mod:`attnlens.attribution.fused_influence`). The widened head size is padded
with zero columns to a multiple of 8 (:data:`HEAD_MULTIPLE`; 64 + 1 runs as 72),
the head sizes CUDA's flash and memory-efficient kernels take.

Large biases (beyond :data:`attnlens.steering.bias.PLAIN`) are folded relative to each
row's largest, with differences past :data:`~attnlens.steering.bias.GAP` shortened,
and such a layer runs in float32 whatever the model's precision: the folded column
``b_j / scale`` then never overflows half precision, and a constant bias is exactly
a no-op.

Soft-capped scores (Gemma 2) never run fused: ``tanh`` of a sum is no sum, so
the bias cannot fold into ``q·k``; the reference path caps them exactly.
Sliding-window layers (Gemma 2 and 3) run fused with the boolean mask that
transformers builds for them (none where the prompt fits the window).

A layer runs fused only when every hook on its score point is an attnlens bias
dispatcher (:func:`attnlens.apply_bias`) and its pattern point has none but
attnlens' span edits: a hook of a user's own on either point still sees the
materialised tensors, on the reference path. What the fused attention adds is
read from the steerings installed in the current call
(:func:`attnlens.steering.kinds.active_at`, a context variable), never from the
hooks: another thread's steering of the same model is not seen. :func:`fused_attention` turns the fused path off (``False``)
for a ``with`` block, to compare against the reference.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable

import torch
from torch import nn

from ..core import _internals as tl
from ..core.errors import AttnlensError
from ..steering.bias import _ScoreBias, dispatcher, is_plain, key_bias, relative_key_bias, wide_dtype
from ..steering.kinds import active_at
from .fused_edits import pattern_edits, span_edit_attention

logger = logging.getLogger(__name__)

#: whether direct runs may use the fused path (see :func:`fused_attention`); per thread and task
_enabled: ContextVar[bool] = ContextVar("attnlens_fused_attention", default=True)

#: a widened head size is padded to a multiple of this: CUDA's flash and memory-efficient sdpa kernels
#: take head sizes that are multiples of 8 and fall back to the math kernel (which forms the score
#: matrix) for others; the zero columns change neither ``q·k`` nor the columns that are read back
HEAD_MULTIPLE = 8

# Hugging Face attention module -> a callable giving the extra value columns of one call
# (``value [batch, kv_heads, key, d]`` -> ``[1|batch, 1|kv_heads, key, columns]``) and taking the
# matching output columns ``[batch, heads, query, columns]``; installed by fused influence for
# the length of one pass, keyed by the model's own modules (weakly: it never keeps a model alive)
_columns: "weakref.WeakKeyDictionary[nn.Module, ColumnRoute]" = weakref.WeakKeyDictionary()


class ColumnRoute:
    """Extra value columns for one attention module: ``values(value)`` then ``take(output)``."""

    def __init__(self, values: Callable[[torch.Tensor], torch.Tensor], take: Callable[[torch.Tensor], None]):
        self.values = values
        self.take = take


@contextmanager
def fused_attention(enabled: bool = True) -> Iterator[None]:
    """Allow (``True``, the default state) or forbid the fused path for the ``with`` block.

    Forbidden, direct runs materialise the scores of every layer with a hook
    (the reference implementation) and influence reads ``hook_pattern``.
    """
    token = _enabled.set(bool(enabled))
    try:
        yield
    finally:
        _enabled.reset(token)


def is_enabled() -> bool:
    return _enabled.get()


def bias_hooks(point: nn.Module | None) -> list[_ScoreBias] | None:
    """The attnlens biases that act on a score hook point in this context; None when a hook of
    any other kind is there."""
    if point is None:
        return []
    pre_hooks, hooks = tl.hook_entries(point)
    if pre_hooks:
        return None
    if hooks and tl.converts_tensors(point):
        return None
    if any(dispatcher(hook_id) is None for hook_id, _fn in hooks):  # a hook that is not attnlens' dispatcher
        return None
    # the biases of the steerings installed in this call (never another thread's: a context variable)
    return [bias for bias in active_at(point) if isinstance(bias, _ScoreBias)]


def softcapped(model: Any) -> bool:
    """Whether ``model`` soft-caps its attention scores (Gemma 2's ``softcap * tanh(s / softcap)``): no per-key
    bias folds into such scores, so its layers run the reference path and influence reads its patterns."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    return getattr(config, "attn_logit_softcapping", None) is not None


def has_hooks(point: nn.Module | None) -> bool:
    return point is not None and tl.has_hooks(point)


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float,
    scores_point: nn.Module | None,
    pattern_point: nn.Module | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None] | None:
    """The fused attention of one direct-run call, or None when the reference path must run it."""
    enabled = _enabled.get()
    route = _columns.get(module)
    edits = pattern_edits(pattern_point) if has_hooks(pattern_point) else []
    if route is None and (not enabled or (dropout and module.training) or edits is None or len(edits) > 1):
        return None
    if edits:  # one pattern edit that reweights its span: run fused (runtime.fused_edits)
        if route is not None:
            raise AttnlensError("fused influence met a hook on a score or pattern point during its pass")
        hooks = bias_hooks(scores_point)
        if hooks is None:
            return None
        bias, wide = _bias(hooks, query, key)
        causal = kwargs.get("is_causal")
        return span_edit_attention(
            edits[0], module, query, key, value, attention_mask, scaling, bias=bias, is_causal=causal,
            sdpa=lambda route: fused_sdpa(module, query, key, value, attention_mask, scaling, bias=bias,
                                          route=route, is_causal=causal, wide=wide))
    hooks = bias_hooks(scores_point)
    if route is not None and (hooks is None or not enabled or (dropout and module.training)
                              or has_hooks(pattern_point)):
        raise AttnlensError("fused influence met a hook on a score or pattern point during its pass")
    if hooks is None or (not hooks and route is None):
        return None
    bias, wide = _bias(hooks, query, key)
    return fused_sdpa(module, query, key, value, attention_mask, scaling, bias=bias, route=route,
                      is_causal=kwargs.get("is_causal"), wide=wide)


def _bias(hooks: list[_ScoreBias], query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor | None, bool]:
    """The key bias of ``hooks`` for one call, and whether it is a large one made relative (run in float32)."""
    if not hooks:
        return None, False
    batch, queries, keys = query.shape[0], query.shape[2], key.shape[2]
    if is_plain(hooks):
        return key_bias(hooks, batch, queries, keys, query.device), False
    # large biases: relative to each row's largest, computed in float32 (see steering.bias)
    total = key_bias(hooks, batch, queries, keys, query.device, wide_dtype(query.device))
    return relative_key_bias(total).float(), True


def fused_sdpa(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    *,
    bias: torch.Tensor | None = None,
    route: ColumnRoute | None = None,
    is_causal: bool | None = None,
    wide: bool = False,
) -> tuple[torch.Tensor, None]:
    """``sdpa`` with a key bias folded into ``q·k`` and extra value columns; output ``[batch, query, head, d]``.

    ``wide``: run in float32 whatever the model's precision (large relative biases)."""
    batch, heads, q_len, d = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    dtype = out_dtype = query.dtype
    if route is None and bias is not None and q_len == 1:
        return _decode_step(query, key, value, attention_mask, scaling, bias)
    extra = route.values(value) if route is not None else None
    if (extra is not None or wide) and dtype not in (torch.float32, torch.float64):
        # the chains (and large folded biases) need more than half precision: this call runs in float32
        query, key, value, dtype = query.float(), key.float(), value.float(), torch.float32
    if groups > 1 and (attention_mask is not None or (bias is not None and bias.shape[1] > 1)
                       or dense_heads_needed(query.device, dtype)):
        # per-head biases (PASTA): each head its own keys; a mask: the fused kernel takes no grouped heads;
        # float32 on an accelerator: only the memory-efficient kernel takes it, and not with grouped heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        if extra is not None and extra.shape[1] == kv_heads > 1:
            extra = extra.repeat_interleave(groups, dim=1)
        kv_heads, groups = heads, 1
    kv_len = key.shape[2]
    n_bias = 1 if bias is not None else 0
    n_extra = extra.shape[-1] if extra is not None else 0
    width = padded_width(d, max(n_bias, n_extra))
    pad = width - d

    def widen(x: torch.Tensor, col: torch.Tensor | None, rows: int, hs: int) -> torch.Tensor:
        out = x.new_zeros((max(x.shape[0], rows), hs, x.shape[2], width))
        out[..., :d] = x
        if col is not None:
            out[..., d : d + col.shape[-1]] = col
        return out

    if pad:
        ones = query.new_ones(()) if n_bias else None
        query = widen(query, ones.expand(1, 1, 1, 1) if ones is not None else None, batch, heads)
        k_col = None
        if bias is not None:
            k_col = (bias.to(dtype) / scaling)[..., None]  # [rows|1, heads|1, key, 1]
            if k_col.shape[1] not in (1, kv_heads):
                raise AttnlensError("a per-head bias does not match the model's heads")
        key = widen(key, k_col, batch, kv_heads)
        value = widen(value, extra.to(dtype) if extra is not None else None, batch, kv_heads)
    causal = q_len > 1 and attention_mask is None and (is_causal if is_causal is not None else
                                                       getattr(module, "is_causal", True))
    if causal and kv_len > q_len:
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    sdpa_kwargs = {"enable_gqa": True} if groups > 1 else {}
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = mask[..., : key.shape[-2]].to(dtype)
    elif mask is not None:
        mask = mask[..., : key.shape[-2]]
    out = nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scaling, is_causal=causal, **sdpa_kwargs
    )
    if mask is not None:
        out = torch.nan_to_num(out)  # rows with every key masked (left padding): zeros, not NaN
    if route is not None:
        route.take(out[..., d : d + n_extra])
    return out[..., :d].to(out_dtype).transpose(1, 2).contiguous(), None


def dense_heads_needed(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a call with grouped heads must repeat its keys and values to one per query head to avoid
    the math kernel (which forms the whole score matrix): float32 (and wider) on an accelerator, where
    flash and cuDNN take half precision only and the memory-efficient kernel no grouped heads (measured
    on CUDA with torch 2.11: without the repeat, Influence at 32,768 tokens of an 8B-shaped model asked
    for 128 GiB). On a CPU the flash kernel takes grouped heads in float32, so nothing is repeated."""
    return device.type not in ("cpu", "meta") and dtype in (torch.float32, torch.float64)


def padded_width(d: int, columns: int) -> int:
    """The head size of a call that appends ``columns`` to heads of size ``d``: ``d`` when none are appended,
    else ``d + columns`` rounded up to a multiple of :data:`HEAD_MULTIPLE` (zero columns add nothing to
    ``q·k`` or to the output that is kept)."""
    if columns <= 0:
        return d
    width = d + columns
    return -(-width // HEAD_MULTIPLE) * HEAD_MULTIPLE


def _decode_step(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    bias: torch.Tensor,
) -> tuple[torch.Tensor, None]:
    """One query per row (a cached decoding step): the bias is an additive mask of one row per head.

    It costs as much as the keys themselves; widening the whole cache for the
    folded product would cost more. Grouped heads are packed as queries of their
    key-value head, as Hugging Face's sdpa does for one query.
    """
    batch, heads, _, d = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    mask = bias.to(query.dtype)[:, :, None, :]  # [rows|1, heads|1, 1, key]
    if attention_mask is not None:
        given = attention_mask[..., :keys]
        if given.dtype == torch.bool:
            mask = mask.masked_fill(~given, torch.finfo(query.dtype).min)
        else:
            mask = mask + given.to(query.dtype)
    if groups > 1:
        query = query.reshape(batch, kv_heads, groups, d)
        mask = mask.reshape(mask.shape[0], kv_heads, groups, keys) if mask.shape[1] == heads else mask
    out = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    if attention_mask is not None:
        out = torch.nan_to_num(out)
    return out.reshape(batch, heads, 1, d).transpose(1, 2).contiguous(), None
