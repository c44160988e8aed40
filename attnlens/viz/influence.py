"""Influence and rollout views: layer-by-layer curves, a token heat map, both in one view."""

from __future__ import annotations

import html as _html
from collections.abc import Sequence
from typing import Any

import torch

from ..core.validate import is_int
from ..core.errors import AttnlensError
from .circuits import _label, _rounded, circuitsvis_html
from .view import HTMLView


# ============================================================================ Influence and rollout views


def _influence_curves(curves: Any) -> dict[str, torch.Tensor]:
    """``{method: [n_layers + 1, seq]}`` from a mapping, an InfluenceTrace (first span) or one tensor."""
    if isinstance(curves, torch.Tensor):
        curves = {"influence": curves}
    elif hasattr(curves, "results") and hasattr(curves, "spans"):  # an InfluenceTrace: its first span
        curves = {m: t[0] for m, t in curves.results.items()}
    if not isinstance(curves, dict) or not curves:
        raise AttnlensError(
            "influence views take a [n_layers + 1, seq] tensor or a {method: tensor} dict "
            f"(e.g. {{'influence': ..., 'rollout': ...}}); got {type(curves).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    shape = None
    for name, values in curves.items():
        values = torch.as_tensor(values).detach().float().cpu()
        if values.ndim != 2 or values.shape[0] < 2:
            raise AttnlensError(
                f"{name}: expected one span's [n_layers + 1, seq] tensor, got shape {tuple(values.shape)} "
                "(for several spans or heads, pass one slice)"
            )
        if shape is not None and values.shape != shape:
            raise AttnlensError(f"{name}: shape {tuple(values.shape)} differs from the others' {tuple(shape)}")
        shape = values.shape
        out[str(name)] = values
    return out


def _influence_tokens(tokens: Sequence[str] | None, seq: int) -> list[str]:
    if tokens is None:
        return [str(i) for i in range(seq)]
    tokens = [str(t) for t in tokens]
    if len(tokens) != seq:
        raise AttnlensError(f"got {len(tokens)} tokens for influence over {seq} positions")
    return tokens


def _influence_positions(positions: Sequence[int] | int | None, seq: int, prompt_length: int | None) -> list[int]:
    if positions is None:
        positions = [(prompt_length if prompt_length else seq) - 1]
    elif isinstance(positions, int):
        positions = [positions]
    out = []
    for p in positions:
        if not is_int(p) or not -seq <= p < seq:
            raise AttnlensError(f"position {p!r} out of range: the sequence has {seq} tokens")
        out.append(p % seq)
    if not out:
        raise AttnlensError("no position to plot")
    return out


def influence_figure(
    curves: Any,
    tokens: Sequence[str] | None = None,
    positions: Sequence[int] | int | None = None,
    *,
    prompt_length: int | None = None,
    title: str = "",
) -> Any:
    """A plotly figure: influence (and rollout) across layers at chosen positions.

    Args:
        curves: ``{"influence": tensor, "rollout": tensor}`` (each ``[n_layers + 1, seq]``),
            one such tensor, or an :class:`attnlens.InfluenceTrace` (its first span).
        tokens: the sequence's tokens as strings (for the legend).
        positions: positions to follow (negative counts from the end); default: the
            last prompt token (``prompt_length - 1``) or the last token.
        prompt_length: where generated tokens begin, when the tensors cover them.

    Layer ``-1`` is the span's indicator (row 0).
    """
    import plotly.graph_objects as go

    data = _influence_curves(curves)
    seq = next(iter(data.values())).shape[1]
    labels = _influence_tokens(tokens, seq)
    chosen = _influence_positions(positions, seq, prompt_length)
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    for i, (method, values) in enumerate(data.items()):
        layers = list(range(-1, values.shape[0] - 1))
        for p in chosen:
            fig.add_trace(go.Scatter(
                x=layers, y=values[:, p].tolist(), mode="lines+markers",
                name=f"{method} @ pos {p} '{_label(labels[p])}'",
                line={"dash": dashes[i % len(dashes)]},
            ))
    fig.update_layout(
        title=title or "Influence of the span across layers",
        xaxis_title="layer (-1: the span itself)",
        yaxis_title="share of the span",
        yaxis={"rangemode": "tozero"},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def influence_tokens(values: Any, tokens: Sequence[str] | None = None) -> Any:
    """A circuitsvis ``colored_tokens`` heat map of one row of influence (e.g. the final layer's)."""
    import circuitsvis as cv

    row = torch.as_tensor(values).detach().float().cpu()
    if row.ndim != 1:
        raise AttnlensError(f"influence_tokens takes one row [seq], got shape {tuple(row.shape)}")
    labels = _influence_tokens(tokens, row.shape[0])
    values = [float(f"{v:.4g}") for v in row.tolist()]  # significant digits: small values stay visible
    return cv.tokens.colored_tokens(
        tokens=[_label(t) for t in labels], values=values, min_value=0.0,
        max_value=max(max(values), 1e-30),
    )


def influence_view(
    curves: Any,
    tokens: Sequence[str] | None = None,
    positions: Sequence[int] | int | None = None,
    *,
    prompt_length: int | None = None,
    title: str = "",
    include_plotlyjs: bool = True,
) -> HTMLView:
    """Influence across layers (plotly) and a token heat map of each method's final row (circuitsvis).

    Arguments as :func:`influence_figure`. Everything is inlined (plotly.js and the
    circuitsvis bundle), so the view renders in a notebook and ``view.save(path)``
    writes a standalone file that works offline (``include_plotlyjs=False`` leaves
    plotly.js out, for a page that already has it). ``view.data`` holds the
    ``figure``, the ``final`` rows (one list per method), ``tokens`` and ``positions``.
    """
    data = _influence_curves(curves)
    seq = next(iter(data.values())).shape[1]
    labels = _influence_tokens(tokens, seq)
    chosen = _influence_positions(positions, seq, prompt_length)
    heading = title or "Influence of the span"
    fig = influence_figure(data, labels, chosen, prompt_length=prompt_length, title=f"{heading}: across layers")
    plot = fig.to_html(full_html=False, include_plotlyjs=bool(include_plotlyjs))
    parts = [
        (f"{method}: final layer, per token", influence_tokens(values[-1], labels))
        for method, values in data.items()
    ]
    body = f"<h3>{_html.escape(heading)}</h3>\n{plot}\n" + circuitsvis_html(parts)
    return HTMLView(
        body,
        title=heading,
        data={
            "figure": fig,
            "final": {m: _rounded(v[-1]) for m, v in data.items()},
            "tokens": labels,
            "positions": chosen,
        },
    )
