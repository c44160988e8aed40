"""Influence and rollout without attention patterns: the chains ride along as attention values.

The recursion of :mod:`attnlens.attribution.recursion` needs, per layer, only
``A·I``: the head-averaged pattern times the running chains of every span and
method. With the chains appended to the values as extra columns, the layer's
one fused attention call (:mod:`attnlens.runtime.fused`) returns ``A_h·I`` for every
head next to its ordinary output; the head mean is taken afterwards (linearity).
``use_values`` appends ``I * |v|`` and ``|v|`` (the summed key-value heads'
norms, and with ``per_head`` each key-value head's own), whose ratio is
``(A∘|v|)·I / (A·|v|)``. Nothing of size ``query x key`` is formed, steering
plans fold into the same kernel call, and the model runs directly
(:mod:`attnlens.runtime.direct`): the residual norm is read before each decoder layer,
the attention output's norm after each attention module (after its post-attention norm, where the
block has one).

:func:`available` says whether a model can be measured this way: a direct run
is possible, the fused path is allowed, and no hook of a user's own listens to
a pattern or score point (those see the materialised tensors, through the
reference path, which :func:`attnlens.runtime.fused.fused_attention` (False) forces).
"""

from __future__ import annotations

import inspect
import logging
from functools import partial
from typing import Any

import torch

from ..core import _internals as tl
from ..core.concurrency import Scoped, call_scope
from ..core.errors import AttnlensError
from ..runtime import fused
from ..runtime.direct import attention_output_module, direct, direct_reason
from .recursion import Recursion, weighted

logger = logging.getLogger(__name__)


def available(model: Any) -> bool:
    """Whether :func:`run` can measure ``model`` (else the hook-based reference runs)."""
    if not fused.is_enabled() or fused.softcapped(model):
        return False
    reason = direct_reason(model)
    if reason is not None:
        if hasattr(reason, "point"):  # a hook of the user's (runtime.direct.HookReason): said out loud
            logger.warning("a hook on %s makes this measurement leave the fused path: it runs layer by layer "
                           "through the bridge's hooks, which is slower", reason.point)
        return False
    for block in model.blocks:
        attn = block.attn
        if fused.has_hooks(getattr(attn, "hook_pattern", None)):
            return False
        if fused.bias_hooks(getattr(attn, "hook_attn_scores", None)) is None:
            return False
        if tl.original_component(block) is None:
            return False
    return True


class _Columns:
    """One layer's extra value columns and what comes back from them."""

    def __init__(self, stream: Recursion, layer: int) -> None:
        self.stream = stream
        self.layer = layer

    def values(self, value: torch.Tensor) -> torch.Tensor:
        s = self.stream
        s.expect(self.layer, "attention")
        if value.shape[0] != 1 or value.shape[2] != s.seq:
            raise AttnlensError(
                f"layer {self.layer} attends over {value.shape[2]} keys; influence needs one full forward "
                f"pass over the {s.seq} tokens (no KV cache)"
            )
        chains = s.chain.T  # [key, C]
        if not s.use_values:
            return chains[None, None]
        norms = torch.linalg.vector_norm(value[0], ord=1, dim=-1, dtype=s.dtype)  # [kv, key]
        total = norms.sum(0)[:, None]  # [key, 1]
        shared = torch.cat([chains * total, total], dim=1)[None, None]  # [1, 1, key, C + 1]
        if not s.per_head:
            return shared
        own = torch.cat([chains[None] * norms[..., None], norms[..., None]], dim=2)[None]  # [1, kv, key, C + 1]
        return torch.cat([shared.expand(1, norms.shape[0], -1, -1), own], dim=-1)

    def take(self, out: torch.Tensor) -> None:
        s = self.stream
        if out.shape[2] != s.seq:
            raise AttnlensError(f"layer {self.layer}: {out.shape[2]} queries, expected {s.seq}")
        prod = out[0].to(s.dtype)  # [head, query, columns]
        columns = s.chain.shape[0] + (1 if s.use_values else 0)
        mean = prod[..., :columns].mean(0)
        heads = None
        if s.per_head:
            heads = (weighted(prod[..., columns:]) if s.use_values else prod).permute(2, 0, 1).contiguous()
        s.set_products((weighted(mean) if s.use_values else mean).T.contiguous(), heads)


def _resid_pre(stream: Any, layer: int, module: Any, args: tuple, kwargs: dict) -> None:
    x = args[0] if args else kwargs.get("hidden_states")
    stream.resid_pre(x, layer=layer)


def _attn_out(stream: Any, layer: int, module: Any, args: tuple, output: Any) -> None:
    stream.attn_out(output[0] if isinstance(output, tuple) else output, layer=layer)
    # masked positions whose residual and attention output are both zero (0 / 0): the mask zeroes them
    stream.repair_nonfinite(layer)


def run(model: Any, stream: Recursion, row: torch.Tensor, mask: torch.Tensor | None) -> None:
    """One direct forward pass of ``model`` over ``row`` that feeds ``stream`` (the influence recursion)."""
    handles: list[Any] = []
    routed: list[Any] = []
    # the wrapped modules, taken before the direct run puts them in their wrappers' places
    modules = [(tl.original_component(block), tl.original_component(block.attn), attention_output_module(block))
               for block in model.blocks]
    with torch.no_grad(), direct(model) as hf, call_scope() as scope:
        try:
            for layer, (decoder, attn, attn_out) in enumerate(modules):
                handles.append(decoder.register_forward_pre_hook(Scoped(partial(_resid_pre, stream, layer), scope),
                                                                 with_kwargs=True))
                handles.append(attn_out.register_forward_hook(Scoped(partial(_attn_out, stream, layer), scope)))
                columns = _Columns(stream, layer)
                fused._columns[attn] = fused.ColumnRoute(columns.values, columns.take)
                routed.append(attn)
            kwargs: dict[str, Any] = {"use_cache": False}
            if mask is not None:
                kwargs["attention_mask"] = mask[None]
            if "logits_to_keep" in inspect.signature(hf.forward).parameters:
                kwargs["logits_to_keep"] = 1  # the logits are not needed
            logger.debug("fused influence: %d tokens, %d layers", row.shape[1], len(routed))
            hf(row, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
            for attn in routed:
                fused._columns.pop(attn, None)
