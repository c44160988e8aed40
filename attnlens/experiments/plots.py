"""Views of experiment results: interactive HTML (plotly) and static images (matplotlib) side by side.

Each plot is written three times beside each other: ``NAME.html`` (plotly, with
plotly.js inlined, so the file opens offline on its own, also when moved),
``NAME.png`` (200 dpi) and ``NAME.svg`` (for a paper). Every point is a mean with
its bootstrap interval, and every plot says how many items (or sources) each
mean rests on; a plot whose intervals rest on fewer than
:data:`~attnlens.experiments.metrics.MIN_RELIABLE_N` of them says so on its face.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .metrics import MIN_RELIABLE_N, bootstrap_ci

logger = logging.getLogger(__name__)

#: the static formats written beside every HTML plot
STATIC_FORMATS = ("png", "svg")
_DPI = 200
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
_GREY = "#555555"


def static_paths(path: str | Path) -> list[Path]:
    """The static images written beside the HTML plot ``path`` (``.png``, ``.svg``)."""
    path = Path(path)
    return [path.with_suffix(f".{fmt}") for fmt in STATIC_FORMATS]


def _small_n_note(n: int, unit: str = "items") -> str:
    return f"n={n} {unit} (< {MIN_RELIABLE_N}): the intervals mean little" if n < MIN_RELIABLE_N else ""


def _write(fig: Any, path: Path, draw: Callable[[Any], None]) -> Path:
    """``fig`` as a standalone HTML file at ``path`` and ``draw``'s matplotlib figure as PNG and SVG beside it."""
    import matplotlib
    from matplotlib.figure import Figure

    path = Path(path)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    # text stays text in the SVG (editable, searchable); no date, so a rerun writes the same file
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "attnlens"}):
        static = Figure(layout="constrained")
        draw(static)
        for target in static_paths(path):
            static.savefig(str(target), dpi=_DPI, metadata={"Date": None} if target.suffix == ".svg" else None)
    logger.info("wrote %s and its static images (%s)", path, ", ".join(STATIC_FORMATS))
    return path


def _err(e: Any) -> tuple[float, float]:
    """(below, above) the mean: the interval's arms, 0 where unknown."""
    return _nz(e.mean - e.low), _nz(e.high - e.mean)


def _nz(x: float) -> float:
    return 0.0 if math.isnan(x) else max(0.0, x)


def _label(s: Any) -> str:
    if s.method == "none":
        return "none"
    return f"{s.method} δ={s.delta:g}" if s.delta else s.method


def _units(s: Any) -> tuple[int, str]:
    clusters = getattr(s, "clusters", None)
    return (s.items, "items") if clusters is None else (clusters, "sources")


# ----------------------------------------------------------------------------- accuracy by condition


def accuracy_vs_delta(summary: Sequence[Any], metric: str | Sequence[str], path: Path, *, title: str = "") -> Path:
    """Every metric (one panel each; ``metric`` is one name or several) by condition, with intervals.

    The x axis is categorical: ``none`` (delta 0), then each steering method's
    deltas in order, then the other conditions; each tick says its n. A method
    with several deltas is one line through ``none``; every condition has its
    interval.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = [metric] if isinstance(metric, str) else list(metric)
    metrics = [m for m in metrics if any(not math.isnan(s.estimates[m].mean) for s in summary if m in s.estimates)]
    if not metrics:
        metrics = [metric] if isinstance(metric, str) else list(metric)[:1]
    order = sorted(range(len(summary)), key=lambda i: (summary[i].method != "none", i))
    ordered = [summary[i] for i in order]
    labels = [_label(s) for s in ordered]
    ticks = [f"{lab}<br>n={_units(s)[0]}" for lab, s in zip(labels, ordered)]
    methods = list(dict.fromkeys(s.method for s in ordered if s.method != "none"))
    position = {id(s): i for i, s in enumerate(ordered)}
    baseline = [s for s in ordered if s.method == "none"]

    def series(method: str) -> list[Any]:
        own = sorted((s for s in ordered if s.method == method), key=lambda s: s.delta)
        return (baseline + own) if len(own) > 1 or (own and own[0].delta) else own

    min_units = min((_units(s)[0] for s in ordered if s.items), default=0)
    unit = _units(ordered[0])[1] if ordered else "items"
    note = _small_n_note(min_units, unit)
    heading = (title or f"{', '.join(metrics)} by condition") + " (mean, bootstrap interval)"

    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=metrics if len(metrics) > 1 else None)
    for row, m in enumerate(metrics, 1):
        if baseline:
            e = baseline[0].estimates.get(m)
            if e is not None:
                below, above = _err(e)
                fig.add_trace(go.Scatter(
                    x=[ticks[0]], y=[e.mean], mode="markers", name="none", legendgroup="none", showlegend=row == 1,
                    marker=dict(color=_GREY, size=9),
                    error_y=dict(type="data", symmetric=False, array=[above], arrayminus=[below]),
                    customdata=[[e.low, e.high, e.n]],
                    hovertemplate="none: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}], n=%{customdata[2]}"
                                  "<extra></extra>",
                ), row=row, col=1)
        for k, method in enumerate(methods):
            points = [s for s in series(method) if m in s.estimates]
            est = [s.estimates[m] for s in points]
            fig.add_trace(go.Scatter(
                x=[ticks[position[id(s)]] for s in points], y=[e.mean for e in est],
                mode="lines+markers" if len(points) > 1 else "markers", name=method, legendgroup=method,
                showlegend=row == 1, marker=dict(color=_COLORS[k % len(_COLORS)], size=9),
                line=dict(color=_COLORS[k % len(_COLORS)]),
                error_y=dict(type="data", symmetric=False, array=[_err(e)[1] for e in est],
                             arrayminus=[_err(e)[0] for e in est]),
                customdata=[[s.condition, e.low, e.high, e.n] for s, e in zip(points, est)],
                hovertemplate="%{customdata[0]}: %{y:.3f} [%{customdata[1]:.3f}, %{customdata[2]:.3f}], "
                              "n=%{customdata[3]}<extra></extra>",
            ), row=row, col=1)
        fig.update_yaxes(title_text=m, row=row, col=1)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=ticks)
    fig.update_xaxes(title_text="condition (steering strength δ; n per condition)", row=len(metrics), col=1)
    fig.update_layout(title=heading + (f"<br><sub style='color:#a00000'>note: {note}</sub>" if note else ""),
                      template="plotly_white", height=140 + 300 * len(metrics), margin=dict(t=110 if note else 80))

    def draw(f: Any) -> None:
        f.set_size_inches(max(5.5, 1.1 * len(ordered) + 2), 1.0 + 2.6 * len(metrics))
        axes = f.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
        for ax, m in zip(axes, metrics):
            if baseline and m in baseline[0].estimates:
                e = baseline[0].estimates[m]
                ax.errorbar([0], [e.mean], yerr=[[_err(e)[0]], [_err(e)[1]]], fmt="o", color=_GREY, capsize=3,
                            label="none")
            for k, method in enumerate(methods):
                points = [s for s in series(method) if m in s.estimates]
                est = [s.estimates[m] for s in points]
                ax.errorbar([position[id(s)] for s in points], [e.mean for e in est],
                            yerr=[[_err(e)[0] for e in est], [_err(e)[1] for e in est]],
                            fmt="o-" if len(points) > 1 else "o", color=_COLORS[k % len(_COLORS)], capsize=3,
                            label=method)
            ax.set_ylabel(m)
            ax.grid(axis="y", alpha=0.3)
        axes[-1].set_xticks(range(len(ordered)), [t.replace("<br>", "\n") for t in ticks])
        axes[-1].set_xlabel("condition (steering strength δ; n per condition)")
        axes[0].legend(fontsize="small", loc="best")
        f.suptitle(heading, fontsize="medium")
        if note:
            f.supxlabel(f"note: {note}", fontsize="small", color="#a00000")

    return _write(fig, path, draw)


# ----------------------------------------------------------------------------- influence and accuracy


def influence_vs_accuracy(rows: Sequence[Mapping[str, Any]], metric: str, path: Path, *, title: str = "",
                          confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Path | None:
    """Per condition: the focus' mean influence against the mean metric, each with a bootstrap interval
    over items (n in the legend), over one faint point per item."""
    import plotly.graph_objects as go

    points: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    influence: dict[tuple[str, str], float] = {}
    for r in rows:
        value = r.get("metrics", {}).get(metric)
        if value is None or r.get("influence") is None:
            continue
        points[r["condition"]][r["item"]].append(float(value))
        influence[(r["condition"], r["item"])] = float(r["influence"])
    if not points:
        return None
    summary = []
    for condition, items in points.items():
        xs = [influence[(condition, i)] for i in items]
        ys = [sum(v) / len(v) for v in items.values()]
        ex = bootstrap_ci(xs, confidence=confidence, resamples=resamples, seed=seed)
        ey = bootstrap_ci(ys, confidence=confidence, resamples=resamples, seed=seed)
        summary.append((condition, list(items), xs, ys, ex, ey))
    note = _small_n_note(min(len(s[1]) for s in summary))
    heading = (title or f"influence vs {metric}") + " (condition means, bootstrap intervals)"
    x_title = "influence of the focus at the last prompt token"
    y_title = f"{metric} (mean over generations)"

    fig = go.Figure()
    for k, (condition, items, xs, ys, ex, ey) in enumerate(summary):
        color = _COLORS[k % len(_COLORS)]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"{condition} items", legendgroup=condition,
                                 showlegend=False, text=items, opacity=0.3, marker=dict(color=color, size=6)))
        fig.add_trace(go.Scatter(
            x=[ex.mean], y=[ey.mean], mode="markers", name=f"{condition} (n={len(items)})", legendgroup=condition,
            marker=dict(color=color, size=12, symbol="diamond"),
            error_x=dict(type="data", symmetric=False, array=[_err(ex)[1]], arrayminus=[_err(ex)[0]]),
            error_y=dict(type="data", symmetric=False, array=[_err(ey)[1]], arrayminus=[_err(ey)[0]]),
            hovertemplate=(f"{condition}: influence {ex.mean:.3f} [{ex.low:.3f}, {ex.high:.3f}], "
                           f"{metric} {ey.mean:.3f} [{ey.low:.3f}, {ey.high:.3f}], n={len(items)}<extra></extra>"),
        ))
    fig.update_layout(title=heading, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white")
    if note:
        fig.add_annotation(text=f"note: {note}", xref="paper", yref="paper", x=0, y=1.02, showarrow=False,
                           font=dict(color="#a00000"), xanchor="left", yanchor="bottom")

    def draw(f: Any) -> None:
        f.set_size_inches(6.5, 4.5)
        ax = f.subplots()
        for k, (condition, items, xs, ys, ex, ey) in enumerate(summary):
            color = _COLORS[k % len(_COLORS)]
            ax.scatter(xs, ys, color=color, alpha=0.3, s=12)
            ax.errorbar([ex.mean], [ey.mean], xerr=[[_err(ex)[0]], [_err(ex)[1]]],
                        yerr=[[_err(ey)[0]], [_err(ey)[1]]], fmt="D", color=color, capsize=3,
                        label=f"{condition} (n={len(items)})")
        ax.set_xlabel(x_title)
        ax.set_ylabel(y_title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        f.suptitle(heading, fontsize="medium")
        if note:
            f.supxlabel(f"note: {note}", fontsize="small", color="#a00000")

    return _write(fig, path, draw)


# ----------------------------------------------------------------------------- the needle study


def needle_heatmap(grid: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Retrieval accuracy by context length (rows) and needle depth (columns), one panel per condition;
    each cell shows its mean and n (its interval on hover and in ``needle_grid.csv``)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    conditions = list(dict.fromkeys(g["condition"] for g in grid))
    lengths = sorted({g["length"] for g in grid})
    depths = sorted({g["depth"] for g in grid})
    cells = {(g["condition"], g["length"], g["depth"]): g for g in grid}
    note = _small_n_note(min((int(g.get("items") or 0) for g in grid), default=0), "needles per cell")
    heading = "needle retrieval accuracy by context length (tokens) and depth"

    def value(c: str, length: Any, d: Any, key: str) -> Any:
        g = cells.get((c, length, d))
        return None if g is None else g.get(key)

    def text(c: str, length: Any, d: Any) -> str:
        g = cells.get((c, length, d))
        return "" if g is None else f"{g['accuracy']:.2f}<br>n={g.get('items')}"

    fig = make_subplots(rows=1, cols=len(conditions), subplot_titles=conditions, shared_yaxes=True,
                        horizontal_spacing=0.04)
    for c, condition in enumerate(conditions, 1):
        fig.add_trace(go.Heatmap(
            z=[[value(condition, length, d, "accuracy") for d in depths] for length in lengths],
            x=[f"{d:g}%" for d in depths], y=[str(length) for length in lengths], zmin=0, zmax=1,
            text=[[text(condition, length, d) for d in depths] for length in lengths], texttemplate="%{text}",
            customdata=[[[value(condition, length, d, k) for k in ("accuracy_low", "accuracy_high", "items")]
                         for d in depths] for length in lengths],
            colorscale="Viridis", showscale=c == len(conditions), colorbar=dict(title="accuracy"),
            hovertemplate="depth %{x}, length %{y}: %{z:.2f} [%{customdata[0]:.2f}, %{customdata[1]:.2f}], "
                          "n=%{customdata[2]}<extra></extra>",
        ), row=1, col=c)
    fig.update_layout(title=heading + (f"<br><sub>note: {note}</sub>" if note else ""), template="plotly_white")
    fig.update_xaxes(title_text="needle depth")
    fig.update_yaxes(title_text="context length", col=1)

    def draw(f: Any) -> None:
        import numpy as np

        f.set_size_inches(max(5.0, 2.2 + 0.9 * len(depths) * len(conditions)), 1.6 + 0.6 * len(lengths))
        axes = f.subplots(1, len(conditions), sharey=True, squeeze=False)[0]
        image = None
        for ax, condition in zip(axes, conditions):
            z = np.array([[value(condition, length, d, "accuracy") for d in depths] for length in lengths],
                         dtype=float)
            image = ax.imshow(z, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            for i, length in enumerate(lengths):
                for j, d in enumerate(depths):
                    g = cells.get((condition, length, d))
                    if g is not None:
                        ax.text(j, i, f"{g['accuracy']:.2f}\nn={g.get('items')}", ha="center", va="center",
                                fontsize="x-small", color="white" if g["accuracy"] < 0.6 else "black")
            ax.set_xticks(range(len(depths)), [f"{d:g}%" for d in depths])
            ax.set_title(condition, fontsize="small")
            ax.set_xlabel("needle depth")
        axes[0].set_yticks(range(len(lengths)), [str(length) for length in lengths])
        axes[0].set_ylabel("context length")
        if image is not None:
            f.colorbar(image, ax=list(axes), label="accuracy")
        f.suptitle(heading, fontsize="medium")
        if note:
            f.supxlabel(f"note: {note}", fontsize="small", color="#a00000")

    return _write(fig, path, draw)


def needle_influence(grid: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """The needle's mean influence at the last prompt token by depth, with its interval over needles,
    one line per condition and length (n in the legend)."""
    import plotly.graph_objects as go

    series: dict[tuple[str, Any], list[Mapping[str, Any]]] = defaultdict(list)
    for g in grid:
        if g.get("influence") is not None:
            series[(g["condition"], g["length"])].append(g)
    for pts in series.values():
        pts.sort(key=lambda g: g["depth"])
    note = _small_n_note(min((int(g.get("items") or 0) for pts in series.values() for g in pts), default=0),
                         "needles per point")
    heading = "needle influence at the last prompt token by depth (mean, bootstrap interval over needles)"

    def arms(g: Mapping[str, Any]) -> tuple[float, float]:
        low, high = g.get("influence_low"), g.get("influence_high")
        if low is None or high is None:
            return 0.0, 0.0
        return _nz(g["influence"] - low), _nz(high - g["influence"])

    def name(condition: str, length: Any, pts: Sequence[Mapping[str, Any]]) -> str:
        ns = sorted({g.get("items") for g in pts if g.get("items") is not None})
        return f"{condition}, {length} tokens" + (f" (n={'/'.join(map(str, ns))})" if ns else "")

    fig = go.Figure()
    for (condition, length), pts in series.items():
        fig.add_trace(go.Scatter(
            x=[g["depth"] for g in pts], y=[g["influence"] for g in pts], mode="lines+markers",
            name=name(condition, length, pts),
            error_y=dict(type="data", symmetric=False, array=[arms(g)[1] for g in pts],
                         arrayminus=[arms(g)[0] for g in pts]),
        ))
    fig.update_layout(title=heading + (f"<br><sub>note: {note}</sub>" if note else ""),
                      xaxis_title="needle depth (%)", yaxis_title="influence", template="plotly_white")

    def draw(f: Any) -> None:
        f.set_size_inches(7.0, 4.5)
        ax = f.subplots()
        for (condition, length), pts in series.items():
            ax.errorbar([g["depth"] for g in pts], [g["influence"] for g in pts],
                        yerr=[[arms(g)[0] for g in pts], [arms(g)[1] for g in pts]], fmt="o-", capsize=3,
                        label=name(condition, length, pts))
        ax.set_xlabel("needle depth (%)")
        ax.set_ylabel("influence")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
        f.suptitle(heading, fontsize="small")
        if note:
            f.supxlabel(f"note: {note}", fontsize="small", color="#a00000")

    return _write(fig, path, draw)
