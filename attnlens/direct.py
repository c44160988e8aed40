"""Direct execution: run a bridge's wrapped Hugging Face model without its per-module wrappers.

A TransformerBridge splices a wrapper component (with its hook points) in place
of every sub-module of the Hugging Face model it wraps: about 1,760 module calls
per decoding step on the embedded model, where the plain model makes about 400.
Steered generation needs only the attention hooks, so :func:`direct` puts each
wrapped module back in its place for the duration of a ``with`` block and routes
attention through a Hugging Face attention function that fires the bridge's own
``blocks.{l}.attn.hook_attn_scores`` and ``blocks.{l}.attn.hook_pattern``
hook points, with the same tensors the bridge gives them: the scaled, masked
pre-softmax scores ``[batch, head, query, key]`` and the pattern after the
softmax. Hooks installed on those points (every bias plan of attnlens is) act as
they do through the bridge; layers whose points have no hooks run Hugging
Face's fused ``sdpa`` attention.

It is used only when it computes what the bridge computes: :func:`direct_reason`
says why not otherwise (a hook on any other hook point or module, an
architecture whose equivalence is not tested, processed weights, offloading),
and callers then run the bridge as it is. Everything is restored on exit, also
when the body raises.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from . import fused

logger = logging.getLogger(__name__)

#: the name registered with transformers' attention and mask interfaces
IMPLEMENTATION = "attnlens_hooked"

#: Hugging Face model types whose direct run is tested against the bridge
SUPPORTED_MODEL_TYPES = frozenset({"gemma", "gpt2", "llama", "mistral", "phi3", "qwen2", "qwen3"})

#: keyword arguments of an attention call that change the computation beyond
#: scores + mask -> softmax -> values (softcapping, attention sinks, ...)
_UNSUPPORTED_ATTENTION_KWARGS = ("softcap", "s_aux", "sinks", "position_bias")

# id(Hugging Face attention module) -> (hook_attn_scores, hook_pattern) while a direct block runs
_routes: dict[int, tuple[nn.Module, nn.Module]] = {}
# ids of Hugging Face models inside a direct block
_active: set[int] = set()
_registered = False


class DirectUnavailable(ValueError):
    """The model cannot be run directly; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot run the model directly: {reason}")
        self.reason = reason


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, hooked_attention)
    # sdpa's masks: none where causality alone masks (the fused kernels' is_causal), else a
    # boolean mask; the reference path turns either into the bridge's additive eager mask
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    _registered = True


def _has_hooks(module: nn.Module, ignore: Collection[int] = ()) -> bool:
    return any(k not in ignore and not _own_hook(f) for k, f in module._forward_hooks.items()) or any(
        k not in ignore and not _own_hook(f) for k, f in module._forward_pre_hooks.items()
    )


def _own_hook(fn: Any) -> bool:
    """A hook of transformers' own (its output capturing, installed once on first use): part of the model."""
    return str(getattr(fn, "__module__", "")).startswith("transformers.utils.output_capturing")


def hooked_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A Hugging Face attention function that fires the bridge's score and pattern hook points."""
    for name in _UNSUPPORTED_ATTENTION_KWARGS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"direct attention does not support {name!r}")
    route = _routes.get(id(module))
    scores_point, pattern_point = route if route is not None else (None, None)
    # --- fused long-context path (attnlens.fused): bias plans and influence without a score matrix
    fused_out = fused.attention(module, query, key, value, attention_mask, scaling, dropout, scores_point,
                                pattern_point, **kwargs)
    if fused_out is not None:
        return fused_out
    # --- end of the fused path
    if not (scores_point is not None and _has_hooks(scores_point)) and not (
        pattern_point is not None and _has_hooks(pattern_point)
    ):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling
    causal = kwargs.get("is_causal")
    if attention_mask is None and query.shape[-2] > 1 and (getattr(module, "is_causal", True) if causal is None
                                                          else causal):
        queries, keys = query.shape[-2], key.shape[-2]
        attention_mask = torch.ones(queries, keys, dtype=torch.bool, device=scores.device).tril(keys - queries)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            attention_mask = torch.zeros((), dtype=scores.dtype, device=scores.device).masked_fill(
                ~attention_mask, torch.finfo(scores.dtype).min
            )
        scores = scores + attention_mask[..., : key.shape[-2]].to(scores.dtype)
    if scores_point is not None:
        scores = scores_point(scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout and module.training:
        pattern = nn.functional.dropout(pattern, p=dropout, training=True)
    if pattern_point is not None:
        pattern = pattern_point(pattern)
    out = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return out, pattern


def direct_reason(model: Any) -> str | None:
    """Why :func:`direct` cannot run ``model`` (None when it can)."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    hf = getattr(model, "original_model", None)
    if hf is None or not isinstance(hf, nn.Module) or not hasattr(model, "blocks"):
        return f"{type(model).__name__} is not a TransformerBridge over a Hugging Face model"
    config = getattr(hf, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not among those tested for direct runs"
    if getattr(model, "compatibility_mode", False):
        return "the bridge runs in compatibility mode (processed weights)"
    if id(hf) in _active:
        return "a direct block is already active on this model"
    try:
        _register()
    except ImportError as exc:  # a transformers without the attention interfaces
        return f"this transformers cannot take a custom attention function ({exc})"
    allowed: set[int] = set()
    # the bridge's own capture hooks live on wrappers that a direct run sets aside
    internal: set[int] = set()
    for block in model.blocks:
        internal.update(handle.id for handle in getattr(block, "_capture_hook_handles", ()))
        attn = getattr(block, "attn", None)
        if attn is None or attn._modules.get("_original_component") is None:
            return "a block has no wrapped attention module"
        for name in ("hook_attn_scores", "hook_pattern"):
            point = attn._modules.get(name)
            if point is not None:
                allowed.add(id(point))
    for module in model.modules():
        if module.__dict__.get("_hf_hook") is not None:
            return f"{_name_of(model, module)} is offloaded by accelerate"
        if (module._forward_hooks or module._forward_pre_hooks) and id(module) not in allowed and _has_hooks(
            module, internal
        ):
            return f"{_name_of(model, module)} has a hook"
        if isinstance(module, GeneralizedComponent) and module._modules.get("_original_component") is None:
            return f"{_name_of(model, module)} ({type(module).__name__}) wraps no module"
    return None


def _name_of(model: nn.Module, target: nn.Module) -> str:
    return next((name or "the model" for name, module in model.named_modules() if module is target), "a module")


@contextmanager
def direct(model: Any) -> Iterator[nn.Module]:
    """Run ``model``'s wrapped Hugging Face model directly for the ``with`` block.

    Yields the Hugging Face model; call it or its ``generate`` inside the block.
    Raises :class:`DirectUnavailable` (a ``ValueError``) naming the reason when
    :func:`direct_reason` gives one.
    """
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    reason = direct_reason(model)  # also registers the attention function
    if reason is not None:
        raise DirectUnavailable(reason)
    hf: nn.Module = model.original_model
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    configs: dict[int, tuple[Any, str]] = {}  # id(config) -> (config, its implementation)
    routes = {}
    for block in model.blocks:
        attn = block.attn
        routes[id(attn._modules["_original_component"])] = (
            attn._modules.get("hook_attn_scores"),
            attn._modules.get("hook_pattern"),
        )
    _active.add(id(hf))
    try:
        stack, seen = [hf], set()
        while stack:
            module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            for name, child in list(module._modules.items()):
                if isinstance(child, GeneralizedComponent):
                    original = child._modules["_original_component"]
                    module._modules[name] = original
                    swaps.append((module, name, child))
                    child = original
                if child is not None:
                    stack.append(child)
        for module in hf.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation") and id(config) not in configs:
                configs[id(config)] = (config, config._attn_implementation)
                config._attn_implementation = IMPLEMENTATION
        _routes.update(routes)
        logger.debug("direct run: %d wrappers set aside", len(swaps))
        yield hf
    finally:
        for key in routes:
            _routes.pop(key, None)
        for config, implementation in configs.values():
            config._attn_implementation = implementation
        for module, name, child in reversed(swaps):
            module._modules[name] = child
        _active.discard(id(hf))
