"""SpotLight as a registered steering method: raise the tagged span's share of attention to a target.

SpotLight (Venkateswaran and Contractor, 2025; a public implementation is
IBM's agent lifecycle toolkit, component ``SpotLightComponent``) measures, in
every layer and for every sample of the batch, the *proportion* of attention
the emphasised span receives: the attention mass on the span's keys, summed over
heads and queries, divided by the total mass. Only where that proportion falls
below a target (``target``, the toolkit's ``alpha``, default 0.2) it adds a
bias on the span's keys (to the log of the attention weights, then
renormalises); where the span already gets its target it leaves the layer
alone. The strength is computed from the attention the run sees, layer by
layer and step by step (prefill and every decoding step), so the method is a
run-time edit of the pattern. That edit multiplies the span keys' weights by one
factor and renormalises, so the method also gives the factor from the span's
shares (``span_factor``), and direct runs take the fused path
(:mod:`attnlens.runtime.fused_edits`) with no score matrix.

This module keeps the definition of the proportion and chooses the bias so
that the proportion *after* the edit reaches the target (the toolkit's single
``ln(target / proportion)`` undershoots it, because renormalising also lowers
the span's share). Two details are stated here because a batch and causal
attention need them: only queries that can attend to the span (at or after its
first token) enter the proportion, and the bias is found by bisection on the
per-query span shares (cheap: one number per head and query). Each row of the
batch gets its own bias.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core.errors import AttnlensError
from .registry import Param, SteeringMethod, layers_param, register

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

#: bisection steps on the bias (it ends within (bracket width) / 2**STEPS of the smallest that reaches the target;
#: the bracket runs from the smallest to the largest bias that lifts one seeing query to the target)
STEPS = 30


def _target(value: Any) -> float:
    if isinstance(value, bool):
        raise AttnlensError(f"spotlight: target must be a share in (0, 1), got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise AttnlensError(f"spotlight: target must be a share in (0, 1), got {value!r}") from None
    if not 0.0 < out < 1.0:
        raise AttnlensError(f"spotlight: target must be a share of attention in (0, 1), got {value!r}")
    return out


def span_share(pattern: torch.Tensor, key_mask: torch.Tensor, starts: Sequence[int | None]) -> torch.Tensor:
    """The span's share of attention per row: ``[rows]``, pooled over heads and the queries that can see it.

    ``pattern``: ``[rows, heads, query, key]`` (the last query is the last key);
    ``key_mask``: ``[rows, 1, 1, key]``; ``starts``: each row's first span position (None: no span).
    A row without a span, or without a query that sees it, gives NaN.
    """
    shares, _ = _shares(pattern.float(), key_mask, starts)
    return shares


def _query_mask(pattern: torch.Tensor, starts: Sequence[int | None]) -> torch.Tensor:
    import torch

    rows, _, q, k = pattern.shape
    positions = torch.arange(k - q, k, device=pattern.device)  # absolute positions of the queries
    first = torch.tensor([k if s is None else s for s in starts], device=pattern.device)
    return positions[None, :] >= first[:, None]  # [rows, query]


def _shares(pattern: torch.Tensor, key_mask: torch.Tensor, starts: Sequence[int | None]):
    per_query = (pattern * key_mask).sum(-1) / pattern.sum(-1).clamp_min(1e-30)  # [rows, heads, query]
    seen = _query_mask(pattern, starts)[:, None, :].expand_as(per_query)
    return _pooled(per_query, seen), (per_query, seen)


def _pooled(per_query: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Each row's span share pooled over the heads and queries that see the span (NaN: none does)."""
    import torch

    count = seen.sum((1, 2))
    pooled = torch.where(seen, per_query, 0.0).sum((1, 2)) / count.clamp_min(1)
    return torch.where(count > 0, pooled, torch.nan)


def _pooled_after(bias: torch.Tensor, per_query: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    import torch

    scale = bias.exp()[:, None, None]
    after = per_query * scale / (per_query * scale + 1.0 - per_query)
    return torch.where(seen, after, 0.0).sum((1, 2)) / seen.sum((1, 2)).clamp_min(1)


def spotlight_bias(pattern: torch.Tensor, key_mask: torch.Tensor, starts: Sequence[int | None],
                   target: float) -> torch.Tensor:
    """Per row, the smallest bias (>= 0, found by bisection) that lifts the span's pooled share to ``target``.

    Rows at or above the target (or with nothing to steer) get 0.
    """
    _, (per_query, seen) = _shares(pattern.float(), key_mask, starts)
    return bias_from_shares(per_query, seen, target)


def bias_from_shares(per_query: torch.Tensor, seen: torch.Tensor, target: float) -> torch.Tensor:
    """:func:`spotlight_bias` from each query's span share (``[rows, heads, query]``) and which queries
    see the span (``[rows, heads, query]`` or ``[rows, query]``): what the fused path computes with."""
    import torch

    if seen.dim() == 2:
        seen = seen[:, None, :].expand_as(per_query)
    pooled = _pooled(per_query, seen)
    below = torch.nan_to_num(pooled, nan=1.0) < target
    if not bool(below.any()):
        return torch.zeros_like(pooled)
    # the bias lies between the smallest and the largest that lifts one seeing query to the target
    s = per_query.clamp(1e-12, 1 - 1e-7)
    needed = torch.log(target * (1 - s) / (s * (1 - target))).clamp_min(0.0)
    high = torch.where(seen, needed, 0.0).amax((1, 2)).clamp_min(1e-6)
    low = torch.where(seen, needed, torch.inf).amin((1, 2)).clamp_max(high).nan_to_num(0.0, posinf=0.0)
    if per_query.numel() <= SMALL:  # a decoding step or a short prompt: many tiny steps run faster in numpy
        found = torch.from_numpy(_bisect_numpy(per_query, seen, low, high, target)).to(per_query)
    else:
        for _ in range(STEPS):
            mid = (low + high) / 2
            reached = _pooled_after(mid, per_query, seen) >= target
            high = torch.where(reached, mid, high)
            low = torch.where(reached, low, mid)
        found = high
    return torch.where(below, found, 0.0)


#: up to this many shares, the bisection runs in numpy (its per-step overhead is far below torch's)
SMALL = 8192


def _bisect_numpy(per_query: torch.Tensor, seen: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                  target: float):
    """The bisection of :func:`bias_from_shares` in numpy (float64): the same steps, the same answer."""
    import numpy as np

    shares = per_query.detach().double().cpu().numpy()
    mask = seen.detach().cpu().numpy()
    count = np.maximum(mask.sum((1, 2)), 1)
    lo = low.detach().double().cpu().numpy()
    hi = high.detach().double().cpu().numpy()
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        scale = np.exp(mid)[:, None, None]
        after = shares * scale / (shares * scale + 1.0 - shares)
        reached = np.where(mask, after, 0.0).sum((1, 2)) / count >= target
        hi = np.where(reached, mid, hi)
        lo = np.where(reached, lo, mid)
    return hi


class SpotLightMethod(SteeringMethod):
    """SpotLight: where the tagged span gets less than ``target`` of a layer's attention, raise it to ``target``."""

    name = "spotlight"
    help = ("SpotLight: raise the share of attention the <!-> tagged <-!> span gets to a target, per layer "
            "and sample, only where it falls below (a run-time edit)")
    params = (
        Param("target", _target, 0.2, "the share of attention (0..1) the span is raised to where it gets less"),
        layers_param(),
    )
    spans = "guide"
    edits = "pattern"
    replaces = ("guide",)  # the same tags: asked for on the command line, it steers them instead of GUIDE

    def steering(self, model: Any, prompts: Sequence[Any], settings: Mapping[str, Any]) -> Any:
        from .edits import RunEdit

        spans = [self.prompt_spans(p) for p in prompts]
        if not any(spans):
            return None
        target = settings["target"]

        def lift(pattern: torch.Tensor, ctx: Any) -> torch.Tensor:
            import torch

            mask = ctx.key_mask(pattern)
            starts = [min(s for s, _ in row) if row else None for row in ctx.spans]
            bias = spotlight_bias(pattern, mask, starts, target)
            if not bool((bias > 0).any()):
                return pattern
            weights = torch.where(mask, bias.exp()[:, None, None, None], 1.0)
            lifted = pattern.float() * weights
            lifted = lifted / lifted.sum(-1, keepdim=True).clamp_min(1e-30)
            return lifted.to(pattern.dtype)

        def factor(share: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
            # the same edit as lift, for the fused path: the span keys' weights times exp(bias)
            return bias_from_shares(share, seen, target).exp()[:, None, None]

        return RunEdit.for_prompts(model, "pattern", lift, spans, layers=settings["layers"], name=self.name,
                                   span_factor=factor)


register(SpotLightMethod())
