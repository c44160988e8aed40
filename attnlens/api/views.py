"""Capture, then show: the calls that run the model for a view and hand the data to :mod:`attnlens.viz`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import viz
from ..analysis.capture import steering_patterns
from ..core.model import Model


def steering_diff(
    model: Model,
    tokens: Any,
    layer: int,
    plan_or_context: Any,
    *,
    heads: Sequence[int] | None = None,
) -> viz.HTMLView:
    """A layer's attention unsteered, under steering, and the difference, as interactive views.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        tokens: a string (tokenized with the model's tokenizer), token ids, or a prepared
            :class:`attnlens.Prompt`.
        layer: the layer to show (negative counts from the end).
        plan_or_context: a :class:`attnlens.BiasPlan` (GUIDE, PASTA or any), a context
            manager that steers the model (``attnlens.guide(model, spans)``), or a function
            returning one.
        heads: the heads to show (default: all).

    Runs the model twice (:func:`attnlens.analysis.capture.steering_patterns`) and
    renders the result with :func:`attnlens.viz.steering_view`.
    """
    return viz.steering_view(steering_patterns(model, tokens, layer, plan_or_context, heads=heads))
