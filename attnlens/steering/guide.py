"""GUIDE: raise the attention every head of chosen layers pays to chosen token spans.

The bias is ``+delta`` on the pre-softmax scores of the span's keys; after the
softmax, a key ``j`` in the span gets weight ``exp(s_j + delta) / Z'`` instead of
``exp(s_j) / Z``: its odds against every unbiased key grow by ``e**delta``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Union

from dataclasses import replace

from ..core.model import Model
from ..core.errors import AttnlensError, SpanError
from ..core.validate import BIAS_LIMIT, LayerSpec, check_number, is_int, plain_scalar
from ..prompts.prompt import Prompt
from ..prompts.span_args import one_span
from .bias import BiasPlan, apply_bias

#: Tag levels 1, 2, 3 scale ``delta_mid`` by these factors.
LEVEL_FACTORS = {1: 0.5, 2: 1.0, 3: 2.0}

Span = Union[tuple[int, int], tuple[int, int, float]]


def level_delta(level: int, delta_mid: float) -> float:
    """The bias of GUIDE level 1, 2 or 3: ``delta_mid/2``, ``delta_mid``, ``2*delta_mid``."""
    try:
        factor = LEVEL_FACTORS[level]
    except (KeyError, TypeError):
        raise AttnlensError(f"GUIDE level {level!r} does not exist (1, 2 or 3)") from None
    value = factor * check_number(delta_mid, "delta_mid")
    if not abs(value) <= BIAS_LIMIT:
        raise AttnlensError(
            f"delta_mid={delta_mid!r} gives a level-{level} bias of {value:g}, beyond ±{BIAS_LIMIT:g} "
            "(it would overflow float32 attention scores)"
        )
    return value


def is_per_row(spans: Sequence[Any]) -> bool:
    """Whether ``spans`` is a list of per-row span lists rather than one span list."""
    return bool(spans) and all(
        isinstance(s, (list, tuple)) and (len(s) == 0 or isinstance(s[0], (list, tuple)))
        for s in spans
    )


def _unpack(span: Any, delta: Any) -> tuple[int, int, float]:
    if not isinstance(span, (list, tuple)):  # a TokenSpan (its delta is not read: ``delta`` applies)
        start, end = one_span(span, what="span")
        return start, end, check_number(delta, "delta")
    if len(span) not in (2, 3):
        raise SpanError(f"span {span!r} must be (start, end) or (start, end, delta)")
    start, end = plain_scalar(span[0]), plain_scalar(span[1])
    if len(span) == 3:
        value = check_number(span[2], f"the delta of span {tuple(span)!r}")
    else:
        value = check_number(delta, "delta")
    return start, end, value


def guide_plan(
    model: Model,
    spans: Sequence[Span] | Sequence[Sequence[Span]],
    delta: float = 1.0,
    layers: LayerSpec = "all",
    *,
    seq_len: int | None = None,
) -> BiasPlan:
    """The :class:`BiasPlan` of :func:`guide` (one list of spans, or one list per batch row)."""
    plan = BiasPlan.for_model(model)
    if isinstance(spans, tuple) and len(spans) in (2, 3) and is_int(spans[0]) or hasattr(spans, "start"):
        spans = [spans]  # a single span
    rows = list(spans) if is_per_row(spans) else [list(spans)]
    per_row = is_per_row(spans)
    if not any(rows):
        raise SpanError("guide needs at least one span")
    for r, row_spans in enumerate(rows):
        for span in row_spans:
            start, end, value = _unpack(span, delta)
            if seq_len is not None and isinstance(end, int) and end > seq_len:
                raise SpanError(f"span [{start}, {end}) runs past the sequence of {seq_len} tokens")
            plan.add(start, end, value, layers=layers, row=r if per_row else None)
    return plan


@contextmanager
def guide(
    model: Model,
    spans: Sequence[Span] | Sequence[Sequence[Span]],
    delta: float = 1.0,
    layers: LayerSpec = "all",
) -> Iterator[BiasPlan]:
    """Steer ``model`` towards token ``spans`` inside the ``with`` block.

    Args:
        model: a TransformerLens ``TransformerBridge`` (or ``HookedTransformer``-like model).
        spans: half-open token ranges ``[(start, end), ...]``, optionally
            ``(start, end, delta)`` triples, or :class:`attnlens.TokenSpan` s (``prompt.spans``);
            or one such list per batch row. (No substrings: this call has no tokens to find them in.)
        delta: the bias added to the spans' pre-softmax scores (when a span gives none).
        layers: ``"all"``, ``"none"``, ``"first"``, ``"last"`` or layer indices.

    Inside the block ``model(tokens)`` and ``model.generate(...)`` are steered.
    """
    with apply_bias(model, guide_plan(model, spans, delta, layers)) as plan:
        yield plan


def check_delta(delta: Any) -> float:
    """``delta`` as a finite float (numpy and torch scalars too), else an error naming it; strings are refused."""
    number = plain_scalar(delta)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise AttnlensError(f"delta_mid must be a number, got {delta!r}")
    try:
        value = float(number)
    except OverflowError:
        raise AttnlensError(f"delta_mid must be finite, got {delta!r}") from None
    if value != value or abs(value) == float("inf"):
        raise AttnlensError(f"delta_mid must be finite, got {delta!r}")
    if abs(value) * max(LEVEL_FACTORS.values()) > BIAS_LIMIT:
        raise AttnlensError(
            f"delta_mid={delta!r} is too large: the level-3 bias (2 x delta_mid) must be within ±{BIAS_LIMIT:g} "
            "(larger ones overflow float32 attention scores)"
        )
    return value


def with_strength(prompt: Prompt, delta_mid: float) -> Prompt:
    """``prompt`` with each GUIDE span's bias set from its level and ``delta_mid`` (others get 0)."""
    delta_mid = check_delta(delta_mid)
    spans = tuple(
        replace(s, delta=level_delta(s.level, delta_mid) if s.kind == "guide" else 0.0) for s in prompt.spans
    )
    return replace(prompt, spans=spans)


def guide_plan_for(
    model: Model,
    prompts: Prompt | Sequence[Prompt],
    layers: LayerSpec = "all",
    *,
    delta_mid: float | None = None,
) -> BiasPlan:
    """The bias plan of prompts' GUIDE spans (positions in the unpadded prompts).

    One :class:`~attnlens.prompts.prompt.Prompt` gives a plan for every row; a
    sequence of prompts gives one row per prompt (for
    :func:`~attnlens.runtime.generate.generate_batch`). ``delta_mid`` sets the
    strength here; without it each span's ``delta`` (:func:`with_strength`) is used.
    """
    plan = BiasPlan.for_model(model)
    if isinstance(prompts, Prompt):
        rows: list[tuple[int | None, Prompt]] = [(None, prompts)]
    else:
        rows = list(enumerate(prompts))
        plan.n_rows = len(rows)
    for row, prompt in rows:
        for span in prompt.guide_spans():
            if delta_mid is not None:
                delta = level_delta(span.level, delta_mid)
            elif span.delta is not None:
                delta = span.delta
            else:
                raise AttnlensError("the prompt's GUIDE spans have no strength: pass delta_mid")
            plan.add(span.start, span.end, delta, layers=layers, row=row)
    return plan

