"""circuitsvis parts inlined from its bundled script (offline), and the helpers views share."""

from __future__ import annotations

import html as _html
import re
from collections.abc import Sequence
from typing import Any

import torch

from ..core.errors import AttnlensError


# ============================================================================ shared: circuitsvis parts

_LOCAL_SRC = re.compile(
    r'^\s*<div id="(?P<id>[^"]+)"(?P<attrs>[^>]*?)/?>\s*<script crossorigin type="module">(?P<js>.*)</script>\s*$',
    re.DOTALL,
)
_RENDER_CALL = "CircuitsVis.render("
#: what must not appear raw inside an inline <script>: ``</script>``, ``<!--``, and the
#: line separators older JavaScript engines end a string at. JSON reads each escape back.
_SCRIPT_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                 "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _escape_call(call: str) -> str:
    """A ``CircuitsVis.render(...)`` call with its JSON data made safe inside an inline ``<script>``.

    The call holds only the element id, a component name and JSON, where ``<``,
    ``>`` and ``&`` occur only inside strings, so escaping them everywhere keeps the
    data the same and makes ``</script>`` in a token inert.
    """
    return call.translate(_SCRIPT_ESCAPES)


def _safe_local_src(src: str) -> str:
    """A view's ``local_src`` with the data part of its script escaped (the bundle is kept as it is)."""
    cut = src.rfind(_RENDER_CALL)
    end = src.rfind("</script>")
    if cut < 0 or end < cut:
        raise AttnlensError("cannot embed this circuitsvis view safely: its script has an unexpected shape")
    return src[:cut] + _escape_call(src[cut:end]) + src[end:]


def circuitsvis_html(
    parts: Sequence[tuple[str | None, Any]], *, after: Sequence[str] | None = None, columns: bool = False
) -> str:
    """One HTML fragment for circuitsvis views: ``[(heading or None, RenderedHTML), ...]``.

    Each view's ``local_src`` carries the whole bundled script (about 1.3 MB); the
    fragment keeps it once, in one module script that renders every part. When a
    ``local_src`` does not have the expected shape, the parts are concatenated as
    they are (each with its own copy of the script). ``after``: HTML placed right after
    each part (its legend); ``columns``: the parts side by side (wrapping on a narrow page).
    """
    after = list(after) if after is not None else [""] * len(parts)
    if len(after) != len(parts):
        raise AttnlensError(f"{len(after)} legends for {len(parts)} views")
    parsed = []
    for _, view in parts:
        match = _LOCAL_SRC.match(view.local_src)
        if match is None or _RENDER_CALL not in match["js"]:
            parsed = None
            break
        js = match["js"]
        cut = js.rfind(_RENDER_CALL)
        parsed.append((match["id"], js[:cut], js[cut:]))
    blocks = []
    shared = parsed is not None and len({bundle for _, bundle, _ in parsed}) == 1
    for i, (heading, view) in enumerate(parts):
        block = [f"<h4>{_html.escape(heading)}</h4>"] if heading else []
        if shared:
            block.append(f'<div id="{parsed[i][0]}" class="attnlens-cv" style="margin: 15px 0;"></div>')
        else:
            # circuitsvis writes <div .../>, which HTML does not close: close it
            src = _safe_local_src(view.local_src)
            block.append(re.sub(r"^(\s*<div [^>]*?)/>", r"\1></div>", src, count=1))
        if after[i]:
            block.append(after[i])
        blocks.append("\n".join(block))
    if columns:
        width = max(100 // max(len(parts), 1) - 1, 20)
        blocks = [f'<div class="attnlens-column" style="flex:1 1 {width}%;min-width:320px;overflow-x:auto">'
                  f"\n{b}\n</div>" for b in blocks]
        pieces = ['<div class="attnlens-columns" style="display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start">',
                  *blocks, "</div>"]
    else:
        pieces = blocks
    if shared:
        calls = "\n".join(_escape_call(call.strip().rstrip(";")) + ";" for _, _, call in parsed)
        pieces.append(f'<script crossorigin type="module">\n{parsed[0][1]}\n{calls}\n</script>')
    return "\n".join(pieces)


def _rounded(tensor: torch.Tensor, digits: int = 4) -> list:
    return torch.round(tensor.detach().float().cpu(), decimals=digits).tolist()


def _label(token: str) -> str:
    """A token as a readable label: surrounding spaces kept, control characters escaped."""
    return token.encode("unicode_escape").decode("ascii") if any(c in token for c in "\n\r\t") else token


# ============================================================================ shared: legends

#: the colours views pass to circuitsvis explicitly, so a legend can state them
POSITIVE = "#1d4ed8"  # blue: attention, influence, a rise in a difference is red (below)
RAISED, LOWERED = "#dc2626", "#2563eb"


def legend(low: str, high: str, colours: Sequence[str], caption: str, *, middle: str | None = None) -> str:
    """A colour scale as HTML: a gradient bar from ``low`` to ``high`` (labels), its colours, a caption.

    circuitsvis draws no scale of its own, so every view puts one of these beside its parts.
    """
    stops = ", ".join(colours)
    mid = (f'<span style="position:absolute;left:50%;top:14px;transform:translateX(-50%)">'
           f'{_html.escape(middle)}</span>') if middle is not None else ""
    return (
        '<div class="attnlens-legend" style="display:flex;align-items:flex-start;gap:8px;'
        'font:12px sans-serif;color:#333;margin:6px 0 10px 0">'
        f'<span style="padding-top:0">{_html.escape(low)}</span>'
        f'<span style="position:relative;display:inline-block;width:180px;height:12px;padding-bottom:14px">'
        f'<span style="display:block;width:180px;height:12px;border:1px solid #888;'
        f'background:linear-gradient(to right, {stops})"></span>{mid}</span>'
        f'<span>{_html.escape(high)}</span>'
        f'<span style="max-width:640px">{_html.escape(caption)}</span></div>'
    )


def pattern_legend() -> str:
    """The legend of an attention pattern drawn with ``min_value=0, max_value=1`` in :data:`POSITIVE`."""
    return legend("0", "1", ["#ffffff", POSITIVE],
                  "colour: attention weight of the query (row) on the key (column), from 0 (white) to 1; "
                  "hover a cell for its value")


def span_label(labels: Sequence[str], start: int, end: int) -> list[str]:
    """Token labels with the span ``[start, end)`` marked: ``⟦`` before its first token, ``⟧`` after its last."""
    out = list(labels)
    if 0 <= start < end <= len(out):
        out[start] = "\u27e6" + out[start]
        out[end - 1] = out[end - 1] + "\u27e7"
    return out
