"""Attribution: follow a token span through the layers (Influence, attention rollout, registered methods).

:func:`methods`, :func:`register`, :func:`get`: the registry
(:mod:`attnlens.attribution.registry`); the shared layer recursion is
:mod:`attnlens.attribution.recursion`.
"""

from .registry import AttributionMethod, RecursionMethod, aliases, get, methods, register, span_methods, unregister
from . import builtin_methods  # noqa: F401  (Influence, rollout and influence_heads register themselves)
from . import token_methods  # noqa: F401  (attention, attention_norm, gradients, occlusion register themselves)
from . import contextcite  # noqa: F401  (ContextCite registers itself)
from . import attnlrp  # noqa: F401  (AttnLRP registers itself)
from .recursion import Recursion
from .influence import CONVENTIONS, InfluenceTrace, as_token_row, check_spans, influence, trace_influence
from .rollout import rollout
from .tokens import Target, TokenAttribution, attribute


def __getattr__(name: str):  # INFLUENCE_METHODS follows the registry (PEP 562)
    if name == "INFLUENCE_METHODS":
        return span_methods()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AttributionMethod", "CONVENTIONS", "INFLUENCE_METHODS", "InfluenceTrace", "Recursion", "RecursionMethod",
           "aliases", "as_token_row", "check_spans", "get", "influence", "methods", "register", "rollout", "span_methods",
           "trace_influence", "unregister", "Target", "TokenAttribution", "attribute"]
