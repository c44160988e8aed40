"""Attribution: follow a token span through the layers (Influence and attention rollout)."""

from .influence import CONVENTIONS, INFLUENCE_METHODS, InfluenceTrace, as_token_row, check_spans, influence, trace_influence
from .rollout import rollout

__all__ = ["CONVENTIONS", "INFLUENCE_METHODS", "InfluenceTrace", "as_token_row", "check_spans", "influence", "rollout", "trace_influence"]
