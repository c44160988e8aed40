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
    system_prompt: bool = False,
) -> viz.HTMLView:
    """A layer's attention unsteered, under steering, and the difference, side by side, each with its colour scale.

    Args:
        model: a TransformerLens ``TransformerBridge``.
        tokens: a string (tokenized with the model's tokenizer), token ids, or a prepared
            :class:`attnlens.Prompt`.
        layer: the layer to show (negative counts from the end).
        plan_or_context: a :class:`attnlens.BiasPlan` (GUIDE, PASTA or any), a context
            manager that steers the model (``attnlens.guide(model, spans)``), or a function
            returning one.
        heads: the heads to show (default: all).
        system_prompt: show the chat template's own system prompt (a chat :class:`attnlens.Prompt`
            whose template added one); left out by default.

    The steered keys are marked (from a plan, or a Prompt's spans).

    Runs the model twice (:func:`attnlens.analysis.capture.steering_patterns`) and
    renders the result with :func:`attnlens.viz.steering_view`.
    """
    return viz.steering_view(steering_patterns(model, tokens, layer, plan_or_context, heads=heads),
                             system_prompt=system_prompt)
