"""GUIDE: raise the attention every head of chosen layers pays to chosen token spans.

The bias is ``+delta`` on the pre-softmax scores of the span's keys; after the
softmax, a key ``j`` in the span gets weight ``exp(s_j + delta) / Z'`` instead of
``exp(s_j) / Z``: its odds against every unbiased key grow by ``e**delta``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Union

from ..core.errors import AttnlensError, SpanError
from .bias import BiasPlan, LayerSpec, apply_bias

#: Tag levels 1, 2, 3 scale ``delta_mid`` by these factors.
LEVEL_FACTORS = {1: 0.5, 2: 1.0, 3: 2.0}

Span = Union[tuple[int, int], tuple[int, int, float]]


def level_delta(level: int, delta_mid: float) -> float:
    """The bias of GUIDE level 1, 2 or 3: ``delta_mid/2``, ``delta_mid``, ``2*delta_mid``."""
    try:
        return LEVEL_FACTORS[level] * float(delta_mid)
    except KeyError:
        raise AttnlensError(f"GUIDE level {level!r} does not exist (1, 2 or 3)") from None


def is_per_row(spans: Sequence[Any]) -> bool:
    """Whether ``spans`` is a list of per-row span lists rather than one span list."""
    return bool(spans) and all(
        isinstance(s, (list, tuple)) and (len(s) == 0 or isinstance(s[0], (list, tuple)))
        for s in spans
    )


def _unpack(span: Any, delta: float) -> tuple[int, int, float]:
    if not isinstance(span, (list, tuple)) or len(span) not in (2, 3):
        raise SpanError(f"span {span!r} must be (start, end) or (start, end, delta)")
    start, end = span[0], span[1]
    value = float(span[2]) if len(span) == 3 else float(delta)
    return start, end, value


def guide_plan(
    model: Any,
    spans: Sequence[Span] | Sequence[Sequence[Span]],
    delta: float = 1.0,
    layers: LayerSpec = "all",
    *,
    seq_len: int | None = None,
) -> BiasPlan:
    """The :class:`BiasPlan` of :func:`guide` (one list of spans, or one list per batch row)."""
    plan = BiasPlan.for_model(model)
    if isinstance(spans, tuple) and len(spans) in (2, 3) and isinstance(spans[0], int):
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
    model: Any,
    spans: Sequence[Span] | Sequence[Sequence[Span]],
    delta: float = 1.0,
    layers: LayerSpec = "all",
) -> Iterator[BiasPlan]:
    """Steer ``model`` towards token ``spans`` inside the ``with`` block.

    Args:
        model: a TransformerLens ``TransformerBridge`` (or ``HookedTransformer``-like model).
        spans: half-open token ranges ``[(start, end), ...]``, optionally
            ``(start, end, delta)`` triples; or one such list per batch row.
        delta: the bias added to the spans' pre-softmax scores (when a span gives none).
        layers: ``"all"``, ``"none"``, ``"first"``, ``"last"`` or layer indices.

    Inside the block ``model(tokens)`` and ``model.generate(...)`` are steered.
    """
    with apply_bias(model, guide_plan(model, spans, delta, layers)) as plan:
        yield plan
