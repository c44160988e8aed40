"""The recursion methods attnlens ships: Influence, attention rollout and influence_heads.

Each is one step of :mod:`attnlens.attribution.recursion`; their declarations
import nothing heavy (the command line reads them to build its options).
"""

from __future__ import annotations

from typing import Any

from .registry import RecursionMethod, register


class InfluenceMethod(RecursionMethod):
    """``I[l] = (|x| I[l-1] + |a| A I[l-1]) / (|x| + |a|)``: the residual and the attention weighted by their norms."""

    name = "influence"
    help = "Influence: the span's share of each position, residual and attention weighted by their L1 norms"

    def mix(self, prev: Any, att: Any, x_share: Any) -> Any:
        return x_share * prev + (1 - x_share) * att


class RolloutMethod(RecursionMethod):
    """Attention rollout: ``I[l] = (I[l-1] + A I[l-1]) / 2`` (no norms, so the same in both conventions)."""

    name = "rollout"
    help = "attention rollout: the residual and the head-averaged attention mixed half and half"
    aliases = ("attention_rollout",)
    fused_conventions = ("stated", "pap")

    def mix(self, prev: Any, att: Any, x_share: Any) -> Any:
        return (prev + att) / 2


class InfluenceHeadsMethod(InfluenceMethod):
    """pay-attention-pipeline's ``InfluenceHeads``: the heads' ``A_h I`` combined by the L2 norms of their outputs."""

    name = "influence_heads"
    help = "Influence with the heads combined by their output norms (pay-attention-pipeline's InfluenceHeads)"
    head_outputs = True
    fused_conventions = ()


register(InfluenceMethod())
register(RolloutMethod())
register(InfluenceHeadsMethod())
