"""Each result of the library has a view: ``record.show()`` and ``record.view()`` find it here.

The views register themselves (:func:`attnlens.core.views.register_view`) for the record classes of
the layers below; classes of the layers above (``HeadProfile``, ``ExperimentResult``) call
:func:`table_view` and :func:`head_grid_view` themselves. :func:`view_of` gives any record's view.
"""

from __future__ import annotations

import html as _html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..analysis.capture import PatternSamples, SteeringPatterns
from ..analysis.descriptions import HeadDescription, HeadDescriptions
from ..analysis.multiples import RankedMultiples
from ..attribution.faithfulness import Faithfulness, FaithfulnessComparison
from ..attribution.influence import InfluenceTrace
from ..attribution.tokens import TokenAttribution
from ..core.errors import AttnlensError
from ..core.records import Record
from ..core.views import register_view, view_of
from .circuits import LOWERED, RAISED, legend
from .influence import influence_view
from .multiples import multiples_table
from .patterns import head_patterns, steering_view
from .view import HTMLView

__all__ = ["head_grid_view", "record_view", "table_view", "view_of"]

#: how each kind of span is marked in a record's text
_SPAN_COLOURS = {"guide": "#fde68a", "influence": "#bbf7d0", "emphasis": "#ddd6fe"}
_CELL = "border:1px solid #bbb;padding:2px 6px;"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        mean, lo, hi = value
        return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"
    return str(value)


def table_view(rows: Sequence[Mapping[str, Any]], title: str = "", *, caption: str = "",
               columns: Sequence[str] | None = None) -> HTMLView:
    """A table of ``rows`` (dicts; ``columns`` picks and orders the keys). A ``(mean, low, high)``
    triple reads ``mean [low, high]``; ``caption`` says what the numbers are (n, the interval)."""
    rows = [dict(r) for r in rows]
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th style='{_CELL}'>{_html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td style='{_CELL}text-align:right'>{_html.escape(_format(r.get(c, '')))}</td>"
                         for c in columns) + "</tr>"
        for r in rows
    )
    parts = [f"<h3>{_html.escape(title)}</h3>"] if title else []
    if caption:
        parts.append(f"<p style='font:13px sans-serif'>{_html.escape(caption)}</p>")
    parts.append(f"<table class='attnlens-table' style='border-collapse:collapse;font:13px sans-serif'>"
                 f"<tr>{head}</tr>{body}</table>")
    return HTMLView("\n".join(parts), title=title, data={"rows": rows})


def head_grid_view(values: Sequence[Sequence[float]], title: str, *, caption: str, low: str = "",
                   high: str = "") -> HTMLView:
    """A layer x head grid coloured around 0 (blue below, red above, white at 0; NaN grey), with its scale."""
    flat = [abs(v) for row in values for v in row if not math.isnan(v)]
    bound = max(flat, default=0.0) or 1.0
    cells = []
    for layer, row in enumerate(values):
        tds = []
        for head, v in enumerate(row):
            if math.isnan(v):
                colour, text = "#ddd", ""
            else:
                a = min(1.0, abs(v) / bound)
                rgb = "220,38,38" if v >= 0 else "37,99,235"
                colour, text = f"rgba({rgb},{a:.3f})", f"{v:+.3f}"
            tds.append(f"<td title='layer {layer} head {head}: {text or 'not profiled'}' "
                       f"style='{_CELL}background:{colour};text-align:right;font-size:11px'>{text}</td>")
        cells.append(f"<tr><th style='{_CELL}'>L{layer}</th>{''.join(tds)}</tr>")
    n_heads = max((len(r) for r in values), default=0)
    head = "".join(f"<th style='{_CELL}'>H{h}</th>" for h in range(n_heads))
    body = (f"<h3>{_html.escape(title)}</h3>\n"
            + legend(low or f"-{bound:.3g}", high or f"+{bound:.3g}", [LOWERED, "#ffffff", RAISED], caption,
                     middle="0")
            + f"\n<table class='attnlens-heads' style='border-collapse:collapse;font:12px sans-serif'>"
              f"<tr><th></th>{head}</tr>{''.join(cells)}</table>")
    return HTMLView(body, title=title, data={"values": [list(r) for r in values]})


# ----------------------------------------------------------------------------- records of the lower layers


def _marked_text(text: str, spans: Sequence[Mapping[str, Any]]) -> str:
    """``text`` with each span's text highlighted (found in order), escaped."""
    out, cursor = [], 0
    for span in spans:
        piece = span.get("text") or ""
        at = text.find(piece, cursor) if piece else -1
        if at < 0:
            continue
        colour = _SPAN_COLOURS.get(span.get("kind", ""), "#e5e7eb")
        label = f"{span.get('kind', 'span')}" + (f" level {span['level']}" if span.get("level") else "") + \
            f", tokens [{span.get('start')}, {span.get('end')})"
        out.append(_html.escape(text[cursor:at]))
        out.append(f"<mark title='{_html.escape(label)}' style='background:{colour};border-bottom:2px solid #555'>"
                   f"{_html.escape(piece)}</mark>")
        cursor = at + len(piece)
    out.append(_html.escape(text[cursor:]))
    return "".join(out)


def record_view(record: Mapping[str, Any], **options: Any) -> HTMLView:
    """A pipeline record (``pipe(...)[0]``), a steered generation, an influence report or one influence entry.

    The prompt with its spans marked (a key names the colours), the generated text, and each influence
    span as :func:`attnlens.viz.influence_view` (``options`` go to it). A chat's template-added system
    prompt (``system_text``) is left out of the text unless ``system_prompt=True``.
    """
    parts: list[str] = []
    text = record.get("prompt")
    system = record.get("system_text")
    if isinstance(text, str) and isinstance(system, str) and system and text.startswith(system) \
            and not options.get("system_prompt"):
        text = text[len(system):]
        parts.append(f"<p style='font:12px sans-serif;color:#555'>The chat template's own system prompt "
                     f"({len(system)} characters) is left out; <code>system_prompt=True</code> shows it.</p>")
    generated = record.get("generated_text", record.get("steered"))
    spans = [s for s in record.get("spans", []) if isinstance(s, Mapping) and "text" in s and "kind" in s]
    if isinstance(text, str):
        key = " ".join(f"<mark style='background:{c}'>{k}</mark>" for k, c in _SPAN_COLOURS.items()
                       if any(s.get("kind") == k for s in spans))
        parts.append("<div class='attnlens-record' style='font:14px sans-serif;max-width:900px'>"
                     f"<p><b>Prompt</b>{' (spans: ' + key + '; hover a span for its tokens)' if key else ''}</p>"
                     f"<pre style='white-space:pre-wrap;background:#f8f8f8;padding:6px'>{_marked_text(text, spans)}</pre>")
        if isinstance(generated, str):
            parts.append(f"<p><b>Generated</b></p><pre style='white-space:pre-wrap;background:#f8f8f8;padding:6px'>"
                         f"{_html.escape(generated)}</pre>")
        extra = {k: record[k] for k in ("backend", "methods", "template") if k in record}
        if extra:
            parts.append("<p style='color:#555'>" + _html.escape(", ".join(f"{k}: {v}" for k, v in extra.items()))
                         + "</p>")
        parts.append("</div>")
    data: dict[str, Any] = {"record": record}
    influence = record.get("influence")
    has_curves = "tensor" in record or ("methods" in record and isinstance(record.get("spans"), list)
                                        and any(m in s for s in record["spans"] for m in record["methods"]))
    if (isinstance(influence, list) and influence) or has_curves:
        inner = influence_view(record, **options)
        parts.append(inner.body)
        data.update(inner.data)
    if not parts:
        raise AttnlensError(f"this record has nothing to show (its keys: {sorted(map(str, record))})")
    title = "Influence" if has_curves and not isinstance(text, str) else "Generation"
    return HTMLView("\n".join(parts), title=title, data=data)


def _trace_view(trace: InfluenceTrace, **options: Any) -> HTMLView:
    return influence_view(trace, **options)


def _attribution_view(record: TokenAttribution) -> HTMLView:
    return HTMLView(record.html(), title=f"attribution: {record.method}", data={"scores": list(record.scores),
                                                                              "tokens": list(record.tokens)})


def _faithfulness_view(result: Faithfulness) -> HTMLView:
    rows = [{"metric": k, "method": v["method"], "random": v["random"]} for k, v in result.summary().items()]
    return table_view(rows, f"Faithfulness of {result.method}",
                      caption=f"one prompt; random: the mean of {result.seeds} random orders; erase={result.erase}, "
                              f"{result.n_erasable} erasable tokens")


def _comparison_view(result: FaithfulnessComparison) -> HTMLView:
    return table_view(result.table(), "Faithfulness compared",
                      caption=f"n = {len(result.per_prompt)} prompts; mean [95% bootstrap interval, "
                              f"{result.n_boot} resamples]; erase={result.erase}, {result.seeds} random orders")


def _descriptions_view(result: HeadDescriptions) -> HTMLView:
    rows = [{"layer": r.layer, "head": r.head, "description": r.description or f"error: {r.error}",
             **({"score": r.score, "control": r.control_score} if r.score is not None else {})} for r in result]
    return table_view(rows, "Head descriptions")


def _multiples_view(rows: RankedMultiples, title: str = "") -> HTMLView:
    if not title and rows:
        title = f"Layer {rows[0].layer} head {rows[0].head}: {len(rows)} ranked multiples"
    return multiples_table(rows, title)


for _cls, _view in ((Record, record_view), (InfluenceTrace, _trace_view), (TokenAttribution, _attribution_view),
                    (Faithfulness, _faithfulness_view), (FaithfulnessComparison, _comparison_view),
                    (HeadDescriptions, _descriptions_view), (RankedMultiples, _multiples_view),
                    (HeadDescription, lambda r: _descriptions_view(HeadDescriptions([r]))),
                    (SteeringPatterns, steering_view), (PatternSamples, lambda r: head_patterns(r))):
    register_view(_cls, _view)
