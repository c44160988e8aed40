"""Influence and rollout views: layer-by-layer curves, a token heat map, both in one view."""

from __future__ import annotations

import html as _html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.validate import is_int
from ..core.errors import AttnlensError
from .circuits import POSITIVE, RAISED, _label, _rounded, circuitsvis_html, legend, span_label
from .view import HTMLView


# ============================================================================ Influence and rollout views


@dataclass
class _Section:
    """One span's curves: ``{method: [n_layers + 1, seq]}``, its token range and a heading."""

    curves: dict[str, torch.Tensor]
    span: tuple[int, int] | None = None
    name: str = ""


@dataclass
class _Input:
    sections: list[_Section]
    tokens: Sequence[str] | None = None
    prompt_length: int | None = None
    system_tokens: int = 0  # leading tokens that are the chat template's own system prompt


def _tensor_like(value: Any) -> bool:
    return isinstance(value, torch.Tensor) or (isinstance(value, (list, tuple)) and bool(value)
                                               and isinstance(value[0], (list, tuple, float, int)))


def _span_name(entry: Mapping[str, Any]) -> str:
    where = f"tokens [{entry['start']}, {entry['end']})" if "start" in entry and "end" in entry else ""
    text = entry.get("text")
    return f"span {text.strip()!r}, {where}" if isinstance(text, str) and text.strip() else f"span {where}"


def _entry_section(entry: Mapping[str, Any], methods: Sequence[str] | None = None) -> _Section:
    """A pipeline record's influence entry (``tensor``, ``method``) or an influence report's span (one key per method)."""
    if "tensor" in entry:
        curves = {str(entry.get("method") or "influence"): entry["tensor"]}
    else:
        names = methods or [k for k, v in entry.items() if k not in ("start", "end", "text", "message")
                            and _tensor_like(v)]
        curves = {m: entry[m] for m in names if m in entry}
    if not curves:
        raise AttnlensError(f"this influence entry holds no curves (its keys: {sorted(map(str, entry))})")
    span = (int(entry["start"]), int(entry["end"])) if is_int(entry.get("start")) and is_int(entry.get("end")) else None
    return _Section(curves, span, _span_name(entry) if span else "")


def _read_input(curves: Any) -> _Input:
    """Whatever the library gives (a tensor, ``{method: tensor}``, an InfluenceTrace, a pipeline record, one of
    its influence entries or their list, an influence report) as sections of curves."""
    if isinstance(curves, torch.Tensor):
        return _Input([_Section({"influence": curves})])
    if hasattr(curves, "results") and hasattr(curves, "spans"):  # an InfluenceTrace: every span
        if getattr(curves, "per_head", False):
            raise AttnlensError("this InfluenceTrace was measured per_head; views take one row per layer "
                                "(measure without per_head, or pass trace[method][span, :, head])")
        sections = [_Section({m: t[i] for m, t in curves.results.items()}, tuple(span), f"span tokens [{span[0]}, {span[1]})")
                    for i, span in enumerate(curves.spans)]
        return _Input(sections)
    if isinstance(curves, Mapping):
        if "influence" in curves and isinstance(curves["influence"], list):  # a pipeline record
            return _read_list(curves["influence"])
        if "spans" in curves and isinstance(curves["spans"], list) and "methods" in curves:  # an influence report
            methods = list(curves["methods"])
            sections = [_entry_section(e, methods) for e in curves["spans"]]
            return _Input(sections, curves.get("tokens"), curves.get("prompt_length"),
                          int(curves.get("system_tokens", 0) or 0))
        if "tensor" in curves:  # one influence entry of a pipeline record
            return _Input([_entry_section(curves)], curves.get("tokens"), curves.get("prompt_length"),
                          int(curves.get("system_tokens", 0) or 0))
        if curves and all(_tensor_like(v) for v in curves.values()):
            return _Input([_Section(dict(curves))])
    if isinstance(curves, (list, tuple)) and curves and all(isinstance(e, Mapping) for e in curves):
        return _read_list(curves)
    raise AttnlensError(
        "influence views take a [n_layers + 1, seq] tensor, a {method: tensor} dict, an InfluenceTrace, "
        "an influence report (attnlens.influence_report), a pipeline record with 'influence' or one of its "
        f"entries; got {type(curves).__name__}"
    )


def _read_list(entries: Sequence[Mapping[str, Any]]) -> _Input:
    if not entries:
        raise AttnlensError("this record has no influence entries (no <?-> ... <-?> span was measured)")
    first = entries[0]
    return _Input([_entry_section(e) for e in entries], first.get("tokens"), first.get("prompt_length"),
                  int(first.get("system_tokens", 0) or 0))


def _influence_curves(curves: Any) -> dict[str, torch.Tensor]:
    """``{method: [n_layers + 1, seq]}`` of the first section (see :func:`_read_input`), checked."""
    return _checked(_read_input(curves).sections[0].curves)


def _checked(curves: Mapping[str, Any]) -> dict[str, torch.Tensor]:
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
            one such tensor, or a record of the library (its first span): an :class:`attnlens.InfluenceTrace`,
            an :func:`attnlens.influence_report`, a pipeline record or one of its ``"influence"`` entries.
        tokens: the sequence's tokens as strings (for the legend).
        positions: positions to follow (negative counts from the end); default: the
            last prompt token (``prompt_length - 1``) or the last token.
        prompt_length: where generated tokens begin, when the tensors cover them.

    Layer ``-1`` is the span's indicator (row 0).
    """
    import plotly.graph_objects as go

    read = _read_input(curves)
    data = _checked(read.sections[0].curves)
    tokens = read.tokens if tokens is None else tokens
    prompt_length = read.prompt_length if prompt_length is None else prompt_length
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
        xaxis={"dtick": 1},
        yaxis_title="share of the span",
        yaxis={"rangemode": "tozero"},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def influence_tokens(values: Any, tokens: Sequence[str] | None = None) -> Any:
    """A circuitsvis ``colored_tokens`` heat map of one row of influence (e.g. the final layer's).

    Colours run from white (0) to :data:`~attnlens.viz.circuits.POSITIVE` at the row's own maximum
    (:func:`heat_map_legend` states it on a page).
    """
    import circuitsvis as cv

    row = torch.as_tensor(values).detach().float().cpu()
    if row.ndim != 1:
        raise AttnlensError(f"influence_tokens takes one row [seq], got shape {tuple(row.shape)}")
    labels = _influence_tokens(tokens, row.shape[0])
    values = [float(f"{v:.4g}") for v in row.tolist()]  # significant digits: small values stay visible
    return cv.tokens.colored_tokens(
        tokens=[_label(t) for t in labels], values=values, min_value=0.0,
        max_value=max(max(values), 1e-30), positive_color=POSITIVE, negative_color=RAISED,
    )


def heat_map_legend(row: Any) -> str:
    """The legend of :func:`influence_tokens`: its scale (per-row maximum) stated in numbers."""
    top = max(float(torch.as_tensor(row).max()), 0.0)
    return legend("0", f"{top:.3g}", ["#ffffff", POSITIVE],
                  "colour: the span's share in each token at the final layer. Scaled per row: the darkest "
                  f"token is this row's maximum ({top:.3g}), so colours compare within a heat map, not across "
                  "heat maps. Hover a token for its value; \u27e6 \u27e7 mark the span.")


def influence_view(
    curves: Any,
    tokens: Sequence[str] | None = None,
    positions: Sequence[int] | int | None = None,
    *,
    prompt_length: int | None = None,
    title: str = "",
    include_plotlyjs: bool = True,
    system_prompt: bool = False,
) -> HTMLView:
    """Influence across layers (plotly) and a token heat map of each method's final row (circuitsvis).

    ``curves``: a ``[n_layers + 1, seq]`` tensor, ``{method: tensor}``, or a record of the library: an
    :class:`attnlens.InfluenceTrace`, an :func:`attnlens.influence_report`, a pipeline record
    (``pipe(...)[0]``), one of its ``"influence"`` entries or their list; records bring their tokens and
    prompt length, and each of their spans gets its own section. Other arguments as
    :func:`influence_figure`. Each heat map states its scale (per-row maximum) and marks the span. A record
    of a chat whose template added its own system prompt (``system_tokens``) is shown without it, and the
    page says so; ``system_prompt=True`` shows it (``positions`` count from the sequence's first token;
    the page numbers the tokens it shows).

    Everything is inlined (plotly.js and the circuitsvis bundle), so the view renders in a notebook and
    ``view.save(path)`` writes a standalone file that works offline (``include_plotlyjs=False`` leaves
    plotly.js out, for a page that already has it). ``view.data`` holds the first span's ``figure`` and
    ``final`` rows (one list per method), ``tokens``, ``positions`` and ``sections`` (per span:
    ``span``, ``final``).
    """
    read = _read_input(curves)
    tokens = read.tokens if tokens is None else tokens
    prompt_length = read.prompt_length if prompt_length is None else prompt_length
    sections = [(_checked(sec.curves), sec) for sec in read.sections]
    seq = next(iter(sections[0][0].values())).shape[1]
    labels = _influence_tokens(tokens, seq)
    chosen = _influence_positions(positions, seq, prompt_length)
    heading = title or "Influence of the span"
    body = [f"<h3>{_html.escape(heading)}</h3>"]
    hidden = 0 if system_prompt else min(read.system_tokens, seq - 1)
    if hidden:  # leave the template's own system prompt out: positions and spans move with it
        body.append(f"<p style='font:12px sans-serif;color:#555'>The chat template's own system prompt "
                    f"({hidden} tokens) is left out; <code>system_prompt=True</code> shows it.</p>")
        sections = [({m: v[:, hidden:] for m, v in data.items()},
                     _Section(sec.curves, None if sec.span is None or sec.span[1] <= hidden
                              else (max(sec.span[0] - hidden, 0), sec.span[1] - hidden), sec.name))
                    for data, sec in sections]
        labels = labels[hidden:]
        kept = [p - hidden for p in chosen if p >= hidden]
        if not kept:
            raise AttnlensError(f"every chosen position lies in the template's system prompt (its first {hidden} "
                                "tokens); choose later positions or pass system_prompt=True")
        chosen = kept
        prompt_length = None if prompt_length is None else prompt_length - hidden
    figure = None
    parts: list[tuple[str | None, Any]] = []
    legends: list[str] = []
    summary = []
    for index, (data, sec) in enumerate(sections):
        if next(iter(data.values())).shape[1] != len(labels):
            raise AttnlensError("the spans of one view must cover the same tokens")
        name = sec.name or ("" if len(sections) == 1 else f"span {index}")
        fig = influence_figure(data, labels, chosen, prompt_length=prompt_length,
                               title=f"{heading}{': ' + name if name else ''}: across layers")
        figure = figure or fig
        plot = fig.to_html(full_html=False, include_plotlyjs=bool(include_plotlyjs) and index == 0)
        marked = span_label(labels, *sec.span) if sec.span else labels
        for method, values in data.items():
            parts.append((f"{method}{' of ' + name if name else ''}: final layer, per token",
                          influence_tokens(values[-1], marked)))
            legends.append(heat_map_legend(values[-1]))
        summary.append({"span": sec.span, "final": {m: _rounded(v[-1]) for m, v in data.items()}, "plot": plot})
    rendered = circuitsvis_html(parts, after=legends)
    body.extend(item["plot"] for item in summary)
    body.append(rendered)
    return HTMLView(
        "\n".join(body),
        title=heading,
        data={
            "figure": figure,
            "final": summary[0]["final"],
            "tokens": labels,
            "positions": chosen,
            "sections": [{"span": item["span"], "final": item["final"]} for item in summary],
            "hidden_tokens": hidden,
        },
    )
