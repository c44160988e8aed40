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


def circuitsvis_html(parts: Sequence[tuple[str | None, Any]]) -> str:
    """One HTML fragment for circuitsvis views: ``[(heading or None, RenderedHTML), ...]``.

    Each view's ``local_src`` carries the whole bundled script (about 1.3 MB); the
    fragment keeps it once, in one module script that renders every part. When a
    ``local_src`` does not have the expected shape, the parts are concatenated as
    they are (each with its own copy of the script).
    """
    parsed = []
    for _, view in parts:
        match = _LOCAL_SRC.match(view.local_src)
        if match is None or _RENDER_CALL not in match["js"]:
            parsed = None
            break
        js = match["js"]
        cut = js.rfind(_RENDER_CALL)
        parsed.append((match["id"], js[:cut], js[cut:]))
    pieces = []
    if parsed is None or len({bundle for _, bundle, _ in parsed}) != 1:
        for heading, view in parts:
            if heading:
                pieces.append(f"<h4>{_html.escape(heading)}</h4>")
            # circuitsvis writes <div .../>, which HTML does not close: close it
            src = _safe_local_src(view.local_src)
            pieces.append(re.sub(r"^(\s*<div [^>]*?)/>", r"\1></div>", src, count=1))
        return "\n".join(pieces)
    for (heading, _), (uid, _, _) in zip(parts, parsed):
        if heading:
            pieces.append(f"<h4>{_html.escape(heading)}</h4>")
        pieces.append(f'<div id="{uid}" class="attnlens-cv" style="margin: 15px 0;"></div>')
    calls = "\n".join(_escape_call(call.strip().rstrip(";")) + ";" for _, _, call in parsed)
    pieces.append(f'<script crossorigin type="module">\n{parsed[0][1]}\n{calls}\n</script>')
    return "\n".join(pieces)


def _rounded(tensor: torch.Tensor, digits: int = 4) -> list:
    return torch.round(tensor.detach().float().cpu(), decimals=digits).tolist()


def _label(token: str) -> str:
    """A token as a readable label: surrounding spaces kept, control characters escaped."""
    return token.encode("unicode_escape").decode("ascii") if any(c in token for c in "\n\r\t") else token
