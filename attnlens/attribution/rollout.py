"""Attention rollout: the Influence recursion without the norm weighting.

``I[l] = (I[l-1] + A @ I[l-1]) / 2``, with ``A`` the head-averaged pattern. It
shares the streaming core of :mod:`attnlens.attribution.influence` (one forward
pass, one layer's pattern at a time); this module only names the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.model import Model
from .influence import SpanLike, TokensLike, influence


def rollout(
    model: Model,
    tokens: TokensLike,
    span: SpanLike | None = None,
    *,
    spans: Sequence[SpanLike] | None = None,
    use_values: bool = False,
    per_head: bool = False,
    attention_mask: Any = None,
    convention: str = "stated",
) -> torch.Tensor:
    """``influence(..., method="rollout")``: ``[n_layers + 1, seq]`` (``[n_spans, ...]`` for ``spans``)."""
    return influence(
        model, tokens, span, spans=spans, method="rollout", use_values=use_values,
        per_head=per_head, attention_mask=attention_mask, convention=convention,
    )
