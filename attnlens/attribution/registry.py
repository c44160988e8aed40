"""Attribution methods as registered objects.

An attribution method follows token spans through the layers and returns, per
span, ``[n_layers + 1, seq]`` (``[n_layers + 1, n_heads, seq]`` with
``per_head``). Two kinds:

- a **recursion** method (:class:`RecursionMethod`): one step of the shared
  layer-by-layer recursion (:mod:`attnlens.attribution.recursion`), given the
  previous chain, the attention term ``A @ I`` and the residual share. Influence,
  rollout and influence_heads are of this kind; they are computed together in
  one forward pass, by the hook driver or the fused driver;
- a method with **its own driver** (:class:`AttributionMethod` with
  :meth:`~AttributionMethod.run`): anything that needs more than the recursion
  (every layer's pattern at once, gradients, extra forward passes).

Every method also scores a prompt's tokens toward a target (``al.attribute``,
:mod:`attnlens.attribution.tokens`): a span method through its trace (one span
per token, read at the target's positions), a **token** method directly with
:meth:`~AttributionMethod.token_scores` (gradients, occlusion, raw attention),
without following spans (``spans = False``).

:func:`register` adds one (also from a user's own module), :func:`methods`
lists the names, :func:`get` returns one, :func:`aliases` maps other names
(pay-attention-pipeline's ``attention_rollout``) to registered ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..core.errors import AttnlensError
from ..core.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


class AttributionMethod:
    """The base of an attribution method with its own driver: set ``name``, implement :meth:`run`.

    Attributes:
        name: the registry key (also a key of :class:`~attnlens.attribution.influence.InfluenceTrace`).
        help: one line for listings and ``--help``.
        aliases: other names that select it (pay-attention-pipeline's metric names).
    """

    name: str = ""
    help: str = ""
    aliases: tuple[str, ...] = ()
    #: follows token spans through the layers (``run`` or a recursion); False: scores tokens only
    spans: bool = True

    def run(self, model: Any, row: "torch.Tensor", spans: Sequence[tuple[int, int]], *, mask: Any,
            use_values: bool, per_head: bool, convention: str) -> "torch.Tensor":
        """``[n_spans, n_layers + 1, (n_heads,) seq]`` for token ``row`` (``[1, seq]``), any dtype."""
        raise AttnlensError(f"attribution method {self.name!r} scores tokens only (al.attribute); "
                            "it does not follow spans through the layers")

    def token_scores(self, model: Any, target: Any) -> "torch.Tensor | None":
        """One score per prompt token toward ``target`` (an :class:`attnlens.attribution.tokens.Target`).

        ``None`` (the default): derived from the span trace (:mod:`attnlens.attribution.tokens`).
        """
        return None

    def __repr__(self) -> str:
        return f"<attribution method {self.name!r}>"


class RecursionMethod(AttributionMethod):
    """One step of the shared recursion: ``I[l] = mix(I[l-1], I_att, x_share)``.

    Attributes:
        head_outputs: needs every head's output (``attn.hook_z``): its attention term is
            the heads' products combined by their output norms, not the head mean.
        fused_conventions: the conventions the fused driver computes it in (it reads only
            ``A @ I``, the residual stream's norm and the attention output's norm).
    """

    head_outputs: bool = False
    fused_conventions: tuple[str, ...] = ("stated",)

    def mix(self, prev: "torch.Tensor", att: "torch.Tensor", x_share: "torch.Tensor") -> "torch.Tensor":
        """The chain after one layer; ``x_share = |x| / (|x| + |a|)`` per token."""
        raise NotImplementedError

    def attention(self, state: Any, rows: slice) -> "torch.Tensor":
        """This method's ``I_att`` rows of one layer from the recursion state (default: the head mean)."""
        return state.att_combined[rows] if self.head_outputs else state.att[rows]


def _check(method: AttributionMethod) -> None:
    name = method.name
    token_only = type(method).token_scores is not AttributionMethod.token_scores
    if type(method).run is AttributionMethod.run and not isinstance(method, RecursionMethod):
        if not token_only:
            raise AttnlensError(f"attribution method {name!r} needs a run() or a token_scores() "
                                "(or subclass RecursionMethod)")
        method.spans = False
    if isinstance(method, RecursionMethod) and type(method).mix is RecursionMethod.mix:
        raise AttnlensError(f"recursion method {name!r} needs a mix()")


_REGISTRY: Registry[AttributionMethod] = Registry("attribution method", AttributionMethod, check=_check)


def register(method: AttributionMethod | type[AttributionMethod], *, replace: bool = False) -> Any:
    """Add an attribution method (an instance, or a subclass as a class decorator); returns what it was given."""
    return _REGISTRY.register(method, replace=replace)


def unregister(name: str) -> None:
    """Remove a registered method."""
    _REGISTRY.unregister(name)


def methods() -> tuple[str, ...]:
    """The registered attribution methods' names, in registration order."""
    return _REGISTRY.names()


def span_methods() -> tuple[str, ...]:
    """The registered methods that follow token spans through the layers (what ``influence`` runs), in
    registration order; the others score tokens only (``attribute``)."""
    return tuple(method.name for method in _REGISTRY.values() if method.spans)


def aliases() -> dict[str, str]:
    """Every name that selects a method (its own and its aliases) -> the method's name."""
    return _REGISTRY.names_and_aliases()


def get(name: str | AttributionMethod) -> AttributionMethod:
    """A registered method by name or alias."""
    return _REGISTRY.get(name)
