"""Capture attention patterns: the model runs here, views and rankings read the result.

:func:`capture_patterns` keeps chosen heads' patterns over many token rows (what
AttentionData ranks); :func:`layer_pattern` one layer for one row;
:func:`steering_patterns` one layer unsteered and under a steering (what
:func:`attnlens.steering_diff` shows). The records here are what the views of
:mod:`attnlens.viz` take: data in, HTML out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from ..core.model import Model
from ..core import hooks as hooks_
from ..core.concurrency import call_scope, exclusive, scoped
from ..core.errors import AttnlensError
from ..core.records import Showable
from ..core.model import model_device, model_shape, pad_id
from ..core.validate import is_int, resolve_heads
from ..steering.bias import BiasPlan
from ..steering.edits import install

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SteeringPatterns(Showable):
    """One layer's attention for one token row, unsteered and steered: ``[head, query, key]`` each."""

    layer: int
    heads: tuple[int, ...]
    tokens: Int[torch.Tensor, "pos"]  # noqa: F821
    str_tokens: list[str]
    unsteered: Float[torch.Tensor, "head query key"]  # noqa: F821
    steered: Float[torch.Tensor, "head query key"]  # noqa: F821
    #: the keys the steering favours at this layer (``()`` when it is not known: a context manager)
    steered_keys: tuple[int, ...] = ()
    #: leading tokens that are the chat template's own system prompt (views leave them out unless asked)
    system_tokens: int = 0


@dataclass(frozen=True)
class PatternSamples(Showable):
    """One head's attention over a few texts, ready to show (:func:`attnlens.viz.head_patterns`).

    ``patterns[i]`` is text ``texts[i]``'s ``[query, key]`` pattern over its
    ``tokens[i]``; with ``first_token_hidden`` the first key's column is zeroed
    and every row renormalised without it.
    """

    layer: int
    head: int
    texts: tuple[int, ...]
    tokens: tuple[tuple[str, ...], ...]
    patterns: tuple[Float[torch.Tensor, "query key"], ...]  # noqa: F821
    previews: tuple[str, ...]
    first_token_hidden: bool = False


def capture_patterns(model: Model, rows: Sequence[Sequence[int]], wanted: dict[int, tuple[int, ...]], *,
                 batch_size: int = 16) -> dict[tuple[int, int], torch.Tensor]:
    """The attention patterns of the ``wanted`` heads (``{layer: heads}``) over token ``rows``: ``[row, query, key]`` each.

    One forward pass per ``batch_size`` rows (right padding and an attention
    mask); a hook on each wanted layer's pattern keeps just those heads, and the
    pass stops after the last layer needed.
    """
    width = max(len(r) for r in rows)
    out = {
        (layer, head): torch.zeros(len(rows), width, width)
        for layer, heads in wanted.items()
        for head in heads
    }
    where = {"start": 0}

    def make_hook(layer: int, heads: tuple[int, ...]) -> Any:
        index = torch.tensor(heads)

        def hook(pattern: torch.Tensor, hook: Any = None) -> None:
            kept = pattern.detach().index_select(1, index.to(pattern.device)).float().cpu()
            start, n, q = where["start"], kept.shape[0], kept.shape[2]
            for i, h in enumerate(heads):
                out[(layer, h)][start : start + n, :q, :q] = kept[:, i]

        return hook

    # in layer order: the pass stops after the last
    hooks = [(hooks_.name(hooks_.PATTERN, layer), make_hook(layer, heads)) for layer, heads in sorted(wanted.items())]
    device, pad = model_device(model), pad_id(model.tokenizer)
    starts = range(0, len(rows), batch_size)
    names = ", ".join(f"L{layer}H{h}" for layer, heads in wanted.items() for h in heads)
    logger.info("computing attention patterns of %s over %d texts", names, len(rows))
    for start in tqdm(starts, desc="attention patterns", disable=len(starts) < 2, leave=False):
        chunk = rows[start : start + batch_size]
        n = max(len(r) for r in chunk)
        tokens = torch.tensor([list(r) + [pad] * (n - len(r)) for r in chunk], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in chunk], device=device)
        where["start"] = start
        with torch.no_grad():
            _capture_pass(model, tokens, hooks, attention_mask=mask)
    return out

class _Captured(Exception):
    """Raised by a pass's last capture hook: what was wanted is kept, the rest of the pass is skipped."""


def _last(hooks: list) -> list:
    """``hooks`` with the last one raising :class:`_Captured` once it has run (the pass stops there).

    TransformerLens' ``stop_at_layer`` is not used: the bridge marks the stopping block on the shared
    module for the pass, so a forward another thread runs meanwhile would stop there too and return the
    residual stream. A hook added in this call's scope stops this call only."""
    *rest, (name, fn) = hooks

    def stop(tensor: torch.Tensor, hook: Any = None) -> None:
        fn(tensor, hook)
        raise _Captured

    return [*rest, (name, stop)]


def _capture_pass(model: Model, tokens: torch.Tensor, hooks: list, **kwargs: Any) -> None:
    """One forward pass of ``model`` with ``hooks`` (their layers in order), stopped after the last; the model
    is held for the pass, and the hooks act only in this call's context."""
    with exclusive(model), call_scope() as scope:
        try:
            model.run_with_hooks(tokens, fwd_hooks=scoped(_last(hooks), scope), return_type=None, **kwargs)
        except _Captured:
            pass




def as_tokens(model: Model, tokens: Any) -> torch.Tensor:
    if isinstance(tokens, str):
        if getattr(model, "tokenizer", None) is None:
            raise AttnlensError("the model has no tokenizer; pass token ids instead of a string")
        ids = model.tokenizer(tokens)["input_ids"]
    elif hasattr(tokens, "input_ids"):  # an attnlens Prompt, or a tokenizer's output
        ids = tokens.input_ids
    else:
        ids = tokens
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.numel() == 0:
        raise AttnlensError(f"tokens must be one non-empty sequence of token ids, got shape {tuple(ids.shape)}")
    return ids


def steering_context(model: Model, plan_or_context: Any) -> Any:
    if isinstance(plan_or_context, BiasPlan) or hasattr(plan_or_context, "install"):  # a plan or a run-time edit
        return install(model, plan_or_context)
    if hasattr(plan_or_context, "__enter__") and hasattr(plan_or_context, "__exit__"):
        return plan_or_context
    if callable(plan_or_context):
        made = plan_or_context()
        if hasattr(made, "__enter__") and hasattr(made, "__exit__"):
            return made
    raise AttnlensError(
        "plan_or_context must be a BiasPlan, a run-time edit (RunEdit), a context manager that steers the model "
        "(e.g. attnlens.guide(model, spans)), or a function returning one; "
        f"got {type(plan_or_context).__name__}"
    )


def layer_pattern(model: Model, tokens: Int[torch.Tensor, "pos"], layer: int) -> Float[torch.Tensor, "head query key"]:  # noqa: F821
    """The attention pattern of every head of ``layer`` for one token row: ``[head, query, key]``."""
    captured: dict[str, torch.Tensor] = {}

    def hook(pattern: torch.Tensor, hook: Any = None) -> None:
        captured["pattern"] = pattern.detach()[0].float().cpu()

    with torch.no_grad():
        _capture_pass(model, tokens[None].to(model_device(model)), [(hooks_.name(hooks_.PATTERN, layer), hook)])
    return captured["pattern"]


def steering_patterns(
    model: Model, tokens: Any, layer: int, plan_or_context: Any, *, heads: Sequence[int] | None = None
) -> SteeringPatterns:
    """Run ``model`` on ``tokens`` twice, without and with the steering, and keep ``layer``'s patterns.

    ``tokens``: a string, token ids or a :class:`~attnlens.prompts.prompt.Prompt`;
    ``plan_or_context``: a :class:`~attnlens.steering.bias.BiasPlan`, a
    :class:`~attnlens.steering.edits.RunEdit`, a context
    manager that steers the model, or a function returning one.
    """
    n_layers, n_heads = model_shape(model)
    if not is_int(layer) or not -n_layers <= layer < n_layers:
        raise AttnlensError(f"layer {layer!r} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    layer %= n_layers
    chosen = resolve_heads(heads, n_heads, layer=layer) or tuple(range(n_heads))
    ids = as_tokens(model, tokens)
    context = steering_context(model, plan_or_context)
    unsteered = layer_pattern(model, ids, layer)
    with context:
        steered = layer_pattern(model, ids, layer)
    index = torch.tensor(chosen)
    tokenizer = getattr(model, "tokenizer", None)
    str_tokens = (
        [tokenizer.decode([t]) for t in ids.tolist()] if tokenizer is not None else [str(t) for t in ids.tolist()]
    )
    keys = favoured_keys(plan_or_context, layer, len(ids))
    if not keys and hasattr(tokens, "spans"):  # a Prompt: its GUIDE and emphasised spans
        keys = tuple(sorted({i for span in tokens.spans if span.kind != "influence" for i in range(span.start, span.end)}))
    return SteeringPatterns(layer, chosen, ids, str_tokens, unsteered[index], steered[index], keys,
                            int(getattr(tokens, "system_tokens", 0) or 0))


def favoured_keys(plan: Any, layer: int, length: int) -> tuple[int, ...]:
    """The key positions a :class:`BiasPlan` favours at ``layer`` (first row): those whose summed bias is
    above the lowest (GUIDE's raised span; PASTA's emphasised span, whose complement is lowered)."""
    if not isinstance(plan, BiasPlan):
        return ()
    bias = [0.0] * length
    for term in plan.terms:
        if layer not in term.layers or term.row not in (None, 0):
            continue
        for i in range(max(term.start, 0), min(length if term.end is None else term.end, length)):
            bias[i] += term.value
    low = min(bias, default=0.0)
    return tuple(i for i, b in enumerate(bias) if b > low)
