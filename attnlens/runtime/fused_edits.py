"""Pattern edits on the fused path: a span's keys reweighted by a factor, without a score matrix.

An edit that multiplies the weights of its span keys by a factor ``w`` (per row,
head and query) and renormalises changes a layer's output ``o = A·V`` to::

    o' = (o + (w - 1) · o_S) / (1 + (w - 1) · s)

where ``s`` is the query's share of attention on the span keys and ``o_S`` the part
of ``o`` those keys give. One fused ``sdpa`` call gives ``o`` and ``s`` together (the
span's indicator as one more value column), and ``o_S`` is ``s`` times the attention
restricted to the span keys, formed explicitly over those few keys only. The edit's
factor is computed from ``s`` (:data:`attnlens.steering.edits.SpanFactor`), so
SpotLight's per-layer, per-step strength runs at long prompt lengths without
materialising ``[batch, head, query, key]``.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..core import _internals as tl
from ..steering.edits import _EditHook, fusable
from ..steering.kinds import active_at

__all__ = ["pattern_edits", "span_edit_attention"]


def pattern_edits(point: nn.Module | None) -> list[Any] | None:
    """The pattern edits with a span factor that the steerings active in this context run at ``point``
    (``[]``: none; :func:`attnlens.steering.kinds.active_at`); None when a hook attnlens did not install
    as such an edit is there (a user's own hook: the reference path runs the layer)."""
    if point is None:
        return []
    pre_hooks, hooks = tl.hook_entries(point)
    if pre_hooks:
        return None
    if any(not fusable(hook_id) for hook_id, _fn in hooks):
        return None
    return [edit for edit in active_at(point) if isinstance(edit, _EditHook)]


def span_edit_attention(
    edit_hook: Any,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    *,
    bias: torch.Tensor | None,
    is_causal: bool | None,
    sdpa: Callable[[Any], tuple[torch.Tensor, None]],
) -> tuple[torch.Tensor, None]:
    """One layer's attention with ``edit_hook``'s span reweighting, fused; output ``[batch, query, head, d]``.

    ``sdpa(route)`` runs the layer's fused call (:func:`attnlens.runtime.fused.fused_sdpa`, with the
    layer's key ``bias``) with the extra value columns ``route.values(value)`` and hands their output to
    ``route.take``.
    """
    batch, heads, q_len, d = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    ctx = edit_hook.context(batch)
    device = query.device
    indicator = torch.zeros(batch, 1, kv_len, 1, device=device)
    starts = []
    for r, row in enumerate(ctx.spans):
        for s, e in row:
            indicator[r, 0, s : min(e, kv_len), 0] = 1.0
        starts.append(min((s for s, _ in row), default=kv_len))
    idx_rows = [torch.nonzero(indicator[r, 0, :, 0]).flatten() for r in range(batch)]
    lengths = [len(i) for i in idx_rows]
    got: dict[str, torch.Tensor] = {}
    route = SimpleNamespace(values=lambda v: indicator.to(v.dtype), take=lambda out: got.__setitem__("share", out))
    out, _ = sdpa(route)
    share = got["share"][..., 0].float()  # [batch, heads, query]
    positions = torch.arange(kv_len - q_len, kv_len, device=device)  # the queries' absolute positions
    seen = positions[None, :] >= torch.tensor(starts, device=device)[:, None]  # [batch, query]
    factor = edit_hook.factor(share, seen)  # checked: finite real numbers of [batch, heads, query]
    if not bool((factor != 1).any()):
        return out, None
    # the span's part of the output: the attention restricted to the span keys, times the share
    width = max(max(lengths), 1)
    idx = torch.zeros(batch, width, dtype=torch.long, device=device)
    valid = torch.zeros(batch, width, dtype=torch.bool, device=device)
    for r, rows in enumerate(idx_rows):
        idx[r, : len(rows)] = rows
        valid[r, : len(rows)] = True
    gather = idx[:, None, :, None].expand(batch, kv_heads, width, d)
    k_span = key.float().gather(2, gather)
    v_span = value.float().gather(2, gather)
    if heads != kv_heads:
        k_span = k_span.repeat_interleave(heads // kv_heads, dim=1)
        v_span = v_span.repeat_interleave(heads // kv_heads, dim=1)
    scores = torch.matmul(query.float(), k_span.transpose(-1, -2)) * scaling  # [batch, heads, query, width]
    if bias is not None:
        b = bias.float().expand(batch, -1, -1)
        scores = scores + b.gather(2, idx[:, None, :].expand(batch, b.shape[1], width))[:, :, None, :]
    visible = valid[:, None, None, :].expand(batch, 1, q_len, width)
    if attention_mask is not None:
        given = attention_mask[..., :kv_len]
        given = given.expand(batch, given.shape[1], q_len, kv_len) if given.dim() == 4 else given
        picked = given.gather(-1, idx[:, None, None, :].expand(batch, given.shape[1], q_len, width))
        if picked.dtype == torch.bool:
            visible = visible & picked
        else:
            scores = scores + picked.float()
    elif q_len > 1 and (is_causal if is_causal is not None else getattr(module, "is_causal", True)):
        visible = visible & (idx[:, None, None, :] <= positions[None, None, :, None])
    scores = scores.masked_fill(~visible, float("-inf"))
    within = torch.nan_to_num(torch.softmax(scores, dim=-1))
    part = share[..., None] * torch.matmul(within, v_span)  # [batch, heads, query, d]
    whole = out.transpose(1, 2).float()
    lifted = (whole + (factor - 1)[..., None] * part) / (1 + (factor - 1) * share)[..., None]
    return lifted.to(out.dtype).transpose(1, 2).contiguous(), None
