"""InstABoost as a registered steering method: a constant bias on the instruction's keys.

InstABoost (Guardieiro et al., 2025, "Instruction Following by Boosting
Attention of Large Language Models", arXiv:2506.13734) multiplies the attention
weight every query pays to the instruction's tokens by a factor ``alpha`` and
renormalises each row, in every layer and head, at prefill and at every
decoding step. Multiplying a softmax's weights by ``alpha`` and renormalising is
the same as adding ``ln(alpha)`` to those keys' pre-softmax scores, so the
method is GUIDE's mechanism (a static per-key bias) under another strength
convention: ``instaboost(alpha)`` equals ``guide(delta_mid=ln(alpha))`` on all
layers. It therefore returns a :class:`~attnlens.steering.bias.BiasPlan`,
which the fused path of a direct run executes.

The paper tunes ``alpha`` per model and task and warns that too large a factor
degrades the text; the default here (``alpha=5``, a bias of about 1.61) is
this package's and sits between GUIDE's level-2 defaults. Use
:func:`attnlens.experiments.tune.tune_strength` to choose it on your own examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import AttnlensError
from .registry import Param, SteeringMethod, layers_param, register


def _alpha(value: Any) -> float:
    if isinstance(value, bool):
        raise AttnlensError(f"instaboost: alpha must be a number >= 1, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise AttnlensError(f"instaboost: alpha must be a number >= 1, got {value!r}") from None
    if not math.isfinite(out) or out < 1.0:
        raise AttnlensError(f"instaboost: alpha must be a finite number >= 1 (1: no boost), got {value!r}")
    return out


def bias_of(alpha: float) -> float:
    """The score bias that InstABoost's factor ``alpha`` amounts to: ``ln(alpha)``."""
    return math.log(_alpha(alpha))


class InstaBoostMethod(SteeringMethod):
    """InstABoost: multiply the attention paid to the tagged instruction by ``alpha`` (every layer and head)."""

    name = "instaboost"
    help = ("InstABoost: multiply the attention every head pays to the <!-> tagged <-!> instruction by alpha "
            "(a bias of ln(alpha) on its keys)")
    params = (
        Param("alpha", _alpha, 5.0, "the factor on the instruction's attention weights before renormalising "
              "(>= 1; the score bias is ln(alpha))"),
        layers_param("the paper: all"),
    )
    spans = "guide"
    edits = "bias"
    replaces = ("guide",)  # the same tags: asked for on the command line, it steers them instead of GUIDE

    def steering(self, model: Any, prompts: Sequence[Any], settings: Mapping[str, Any]) -> Any:
        from .bias import BiasPlan

        if not any(self.prompt_spans(p) for p in prompts):
            return None
        plan = BiasPlan.for_model(model)
        plan.n_rows = len(prompts)
        delta = math.log(settings["alpha"])
        for row, prompt in enumerate(prompts):
            for start, end in self.prompt_spans(prompt):
                plan.add(start, end, delta, layers=settings["layers"], row=row)
        return plan


register(InstaBoostMethod())
