"""PASTA: post-hoc attention steering of chosen heads (Zhang et al., 2023).

PASTA emphasises token spans of a prompt on a few selected attention heads only.
With ``scale_position="exclude"`` (the paper's default) it adds ``log(alpha)``
to the pre-softmax scores of every *prompt* key outside the spans, on the
chosen heads; after the softmax that multiplies the attention those keys get by
``alpha`` before renormalisation, so the spans take the freed attention.
With ``"include"`` it adds ``log(1/alpha)`` to the span keys instead. Keys of
generated tokens are never scaled.

Both are terms of a :class:`~attnlens.steering.bias.BiasPlan`, so PASTA works on
every model a TransformerBridge wraps and adds up with GUIDE (or any other plan)
in one forward or one ``generate``.

With ``exclude`` and one emphasised section this is numerically pastalib's
operation. pastalib differs elsewhere: its ``include`` adds ``log(alpha)`` to the
spans and subtracts it from every prompt key (so with ``alpha < 1`` the rest of
the prompt gains, not the spans), and with several sections it excludes around
each one separately and adds the terms up (keys outside all ``k`` sections get
``k * log(alpha)``, keys inside one ``(k - 1) * log(alpha)``); here the keys
outside the union of the sections get ``log(alpha)`` once.

Which heads: ``head_config`` is ``{layer: [heads]}`` (int or str keys, as in
pastalib's published JSON files, see :func:`load_head_config`) or a list of
layers (all their heads). :func:`attnlens.api.profile.profile_heads` finds
heads worth steering for a task.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Union


from ..core.model import Model
from ..core.validate import is_int, plain_scalar
from ..core.errors import AttnlensError, SpanError
from ..core.errors import HeadConfigError
from ..core.model import model_shape
from ..core.validate import resolve_heads
from ..prompts.prompt import TokenSpan
from .bias import BiasPlan, apply_bias, complement

logger = logging.getLogger(__name__)

SCALE_POSITIONS = ("exclude", "include")

#: ``{layer: [heads]}`` (keys int or str) or a list of layers
HeadConfigLike = Union[Mapping[Any, Sequence[int]], Sequence[int], str, os.PathLike]
#: a normalised head config: sorted layers, each with its sorted heads
HeadConfig = dict[int, tuple[int, ...]]



# ----------------------------------------------------------------------------- head configs


def load_head_config(path: str | os.PathLike) -> dict[str, list[int]]:
    """Read a head config from a JSON file in pastalib's format: ``{"layer": [heads], ...}``.

    A JSON list of layers (steer all their heads) is accepted too. The result is
    returned as stored; :func:`normalize_head_config` checks it against a model.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise HeadConfigError(f"a head config path must be a str or path, got {type(path).__name__} {path!r}")
    file = Path(path).expanduser()
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise HeadConfigError(f"cannot read head config {str(file)!r}: {exc.strerror or exc}") from None
    except ValueError as exc:  # invalid UTF-8, or a NUL in the path
        raise HeadConfigError(f"cannot read head config {str(file)!r}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HeadConfigError(f"head config {str(file)!r} is not valid JSON: {exc}") from None
    except RecursionError:
        raise HeadConfigError(f"head config {str(file)!r} is nested too deeply") from None
    if not isinstance(data, (dict, list)):
        raise HeadConfigError(
            f"head config {str(file)!r} must be a JSON object {{\"layer\": [heads]}} or a list of layers"
        )
    return data


def _index(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise HeadConfigError(f"{what} {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise HeadConfigError(f"{what} {value!r} is not an integer")


def normalize_head_config(head_config: HeadConfigLike, n_layers: int, n_heads: int) -> HeadConfig:
    """Check a head config against a model's shape and return ``{layer: (heads, ...)}``, sorted.

    Accepts ``{layer: [heads]}`` with int or str keys (``None`` or ``"all"`` as
    the value: every head), a list of layers (every head of each), or the path
    of a JSON file in pastalib's format.
    """
    if isinstance(head_config, (str, os.PathLike)):
        head_config = load_head_config(head_config)
    if isinstance(head_config, Mapping):
        items = list(head_config.items())
    elif isinstance(head_config, Sequence):
        items = [(layer, None) for layer in head_config]
    else:
        raise HeadConfigError(
            f"head_config must be {{layer: [heads]}} or a list of layers, got {type(head_config).__name__}"
        )
    if not items:
        raise HeadConfigError("head_config is empty: name at least one layer")
    out: dict[int, set[int]] = {}
    for key, heads in items:
        layer = _index(key, "layer")
        if not 0 <= layer < n_layers:
            raise HeadConfigError(
                f"layer {key!r} in head_config is out of range: the model has {n_layers} layers (0..{n_layers - 1})"
            )
        if heads is None or (isinstance(heads, str) and heads.strip().lower() == "all"):
            chosen = set(range(n_heads))
        else:
            if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence):
                raise HeadConfigError(f"layer {layer}: heads must be a list of integers, got {heads!r}")
            if not heads:
                raise HeadConfigError(f"layer {layer} has an empty head list in head_config")
            chosen = set(resolve_heads([_index(h, f"head (layer {layer})") for h in heads], n_heads,
                                       layer=layer, negative=False, error=HeadConfigError) or ())
        out.setdefault(layer, set()).update(chosen)
    return {layer: tuple(sorted(out[layer])) for layer in sorted(out)}


def head_config_to_json(head_config: Mapping[int, Sequence[int]]) -> dict[str, list[int]]:
    """pastalib's JSON form of a head config: string layer keys, lists of heads."""
    return {str(layer): [int(h) for h in heads] for layer, heads in head_config.items()}


def count_heads(head_config: Mapping[int, Sequence[int]]) -> int:
    return sum(len(heads) for heads in head_config.values())


# ----------------------------------------------------------------------------- numerics


def check_alpha(alpha: Any, scale_position: str) -> float:
    """Validate ``alpha`` for ``scale_position``: (0, 1] for ``exclude``, > 0 for ``include``."""
    alpha = plain_scalar(alpha)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise AttnlensError(f"alpha must be a number, got {alpha!r}")
    value = float(alpha)
    if not math.isfinite(value) or value <= 0:
        raise AttnlensError(f"alpha must be > 0 (it is a scaling factor of attention), got {alpha!r}")
    if scale_position == "exclude" and value > 1:
        raise AttnlensError(
            f"alpha must be in (0, 1] with scale_position='exclude' (it scales the attention paid to "
            f"the rest of the prompt down), got {alpha!r}"
        )
    return value


def check_scale_position(scale_position: Any) -> str:
    if scale_position not in SCALE_POSITIONS:
        raise AttnlensError(
            f"unknown scale_position {scale_position!r}: use 'exclude' (scale the rest of the prompt by "
            "alpha) or 'include' (scale the spans by 1/alpha)"
        )
    return scale_position


def _is_span(item: Any) -> bool:
    if isinstance(item, TokenSpan):
        return True
    return (
        isinstance(item, (list, tuple))
        and len(item) == 2
        and all(is_int(v) for v in item)
    )


def _rows_of_spans(spans: Any) -> tuple[list[list[tuple[int, int]]], bool]:
    """One span list, or one span list per batch row -> (rows, per_row)."""
    if _is_span(spans):
        return [[tuple(spans)]], False  # type: ignore[list-item]
    if not isinstance(spans, Sequence) or isinstance(spans, (str, bytes)):
        raise SpanError(f"spans must be a list of (start, end) token ranges, got {spans!r}")
    if not spans:
        raise SpanError("PASTA needs at least one span to emphasise; the span list is empty")
    if all(_is_span(s) for s in spans):
        return [[tuple(s) for s in spans]], False  # type: ignore[misc]
    if all(isinstance(s, Sequence) and not isinstance(s, (str, bytes)) for s in spans):
        rows = []
        for r, row in enumerate(spans):
            if not row:
                raise SpanError(f"row {r} has no span to emphasise")
            bad = [s for s in row if not _is_span(s)]
            if bad:
                raise SpanError(f"row {r}: span {bad[0]!r} is not a (start, end) pair of integers")
            rows.append([tuple(s) for s in row])
        return rows, True  # type: ignore[return-value]
    bad = next(s for s in spans if not _is_span(s))
    raise SpanError(f"span {bad!r} is not a (start, end) pair of integers")


def _merge(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def pasta_plan(
    model: Model,
    spans: Sequence[tuple[int, int]] | Sequence[Sequence[tuple[int, int]]],
    head_config: HeadConfigLike,
    alpha: float = 0.01,
    scale_position: str = "exclude",
    seq_len: int | Sequence[int] | None = None,
) -> BiasPlan:
    """The :class:`BiasPlan` of PASTA for token ``spans`` of the unpadded prompt.

    Args:
        model: the TransformerBridge (only its shape is used).
        spans: ``[(start, end), ...]`` half-open token ranges, or one such list per batch row.
        head_config: ``{layer: [heads]}`` (int or str keys), a list of layers (all heads), or a JSON path.
        alpha: the scaling coefficient: ``exclude`` adds ``log(alpha)`` to the other prompt keys,
            ``include`` adds ``log(1/alpha)`` to the span keys.
        scale_position: ``"exclude"`` or ``"include"``.
        seq_len: the prompt length (one int, or one per row). With it the exclude region is
            ``[0, seq_len)`` minus the spans and spans past it raise; without it the region runs
            to the end of the prompt (the key count of the last full forward).
    """
    scale_position = check_scale_position(scale_position)
    alpha = check_alpha(alpha, scale_position)
    n_layers, n_heads = model_shape(model)
    config = normalize_head_config(head_config, n_layers, n_heads)
    rows, per_row = _rows_of_spans(spans)
    if seq_len is None or isinstance(seq_len, int):
        lengths: list[int | None] = [seq_len] * len(rows)
    else:
        lengths = list(seq_len)
        if not per_row or len(lengths) != len(rows):
            raise SpanError(f"seq_len gives {len(lengths)} lengths for {len(rows)} row(s) of spans")
    for n in lengths:
        if n is not None and (not is_int(n) or n < 1):
            raise SpanError(f"seq_len must be a positive integer, got {n!r}")

    # layers with the same heads share terms
    groups: dict[tuple[int, ...] | None, list[int]] = {}
    for layer, heads in config.items():
        groups.setdefault(None if len(heads) == n_heads else heads, []).append(layer)

    plan = BiasPlan(n_layers, n_heads)
    log_alpha = math.log(alpha)
    for r, (row_spans, length) in enumerate(zip(rows, lengths)):
        for s, e in row_spans:
            if s < 0 or e <= s:
                raise SpanError(f"span [{s}, {e}) is empty or negative")
            if length is not None and e > length:
                raise SpanError(f"span [{s}, {e}) runs past the prompt of {length} tokens")
        if scale_position == "exclude":
            ranges: list[tuple[int, int | None]] = complement(row_spans, length)
            value = log_alpha
        else:
            ranges = list(_merge(row_spans))
            value = -log_alpha
        for heads, layers in groups.items():
            for start, end in ranges:
                plan.add(start, end, value, layers=layers, heads=heads, row=r if per_row else None)
    if per_row:
        plan.n_rows = len(rows)
    return plan


@contextmanager
def pasta(
    model: Model,
    spans: Sequence[tuple[int, int]] | Sequence[Sequence[tuple[int, int]]],
    head_config: HeadConfigLike,
    alpha: float = 0.01,
    scale_position: str = "exclude",
    *,
    seq_len: int | Sequence[int] | None = None,
) -> Iterator[BiasPlan]:
    """Steer the heads of ``head_config`` towards token ``spans`` inside the ``with`` block.

    ``model(tokens)`` and ``model.generate(...)`` inside the block are steered;
    spans are positions in the tokens given to the model (one list, or one list
    per batch row). Nest it with :func:`attnlens.guide` (or any ``apply_bias``)
    and the biases add up.
    """
    with apply_bias(model, pasta_plan(model, spans, head_config, alpha, scale_position, seq_len)) as plan:
        yield plan


# ----------------------------------------------------------------------------- substrings -> spans

