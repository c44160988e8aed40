"""GUIDE as a registered steering method: ``+delta`` on the keys of a prompt's GUIDE-tagged spans.

The method's declaration imports nothing heavy (the command line reads it to
build its options); the plan comes from :mod:`attnlens.steering.guide`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import AttnlensError
from .registry import Param, SteeringMethod, layers_param, register


def _delta_mid(value: Any) -> float:
    from .guide import check_delta

    if isinstance(value, str):  # from the command line (--set guide.delta_mid=2, --grid 1 2)
        try:
            value = float(value)
        except ValueError:
            raise AttnlensError(f"guide: delta_mid must be a number, got {value!r}") from None
    return check_delta(value)


class GuideMethod(SteeringMethod):
    """GUIDE: raise the attention every head of chosen layers pays to tagged spans (a static key bias)."""

    name = "guide"
    help = "GUIDE: raise the attention every head of chosen layers pays to <!-> tagged <-!> spans"
    params = (
        Param("delta_mid", _delta_mid, None,
              "the level-2 bias (level 1: half, level 3: double); None: the strength the prompt was prepared with",
              flag="--delta-mid"),
        layers_param(flag="--layers"),
    )
    spans = "guide"
    edits = "bias"
    on_by_default = True  # the tags ask for it

    def steering(self, model: Any, prompts: Sequence[Any], settings: Mapping[str, Any]) -> Any:
        from .guide import guide_plan_for

        if not any(p.guide_spans() for p in prompts):
            return None
        return guide_plan_for(model, list(prompts), settings["layers"], delta_mid=settings["delta_mid"])


register(GuideMethod())
