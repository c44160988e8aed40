"""AttentionData's views: ranked multiples as a table or text, a head's description."""

from __future__ import annotations

import html as _html
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .circuits import _label, legend
from .view import HTMLView, in_notebook

if TYPE_CHECKING:
    from ..analysis.multiples import RankedMultiple

logger = logging.getLogger(__name__)


def _cell_token(token: str) -> str:
    shown = token.strip()
    return _html.escape(shown if shown else repr(token))


def _joins(previous: str, token: str) -> bool:
    """Whether ``token`` continues the word ``previous`` ends (no space between, letters or digits on both sides)."""
    return bool(previous and token) and not token[0].isspace() and previous[-1].isalnum() and token[0].isalnum()


def word_of(tokens: Sequence[str], key: int) -> str:
    """The word token ``key`` is part of, joined from its sub-word tokens (``"ases"`` in ``" ch" "ases"`` -> ``"chases"``)."""
    start, end = key, key + 1
    while start > 0 and _joins(tokens[start - 1], tokens[start]):
        start -= 1
    while end < len(tokens) and _joins(tokens[end - 1], tokens[end]):
        end += 1
    return "".join(tokens[start:end]).strip()


def _row_token(token: str) -> str:
    """A token of a row as it reads in the text: its own spaces kept (as spaces), control characters escaped."""
    return _html.escape(_label(token))


def multiples_table(
    rows: Sequence["RankedMultiple"], title: str = "", *, suppress_first_token: bool = True
) -> HTMLView:
    """The table of ranked multiples: token, multiple, then the row's tokens coloured by attention.

    A cell's red is the token's attention relative to the row's most-attended token;
    the ranked token's cell is outlined. With ``suppress_first_token`` the first
    token is shown uncoloured and the rest of the row renormalised without it.
    Rows read as text: sub-word tokens are joined as in the text (a token's own
    leading space is its only space; a thin line marks each token boundary), and a
    ranked sub-word token names its word (``ases`` in "chases"). A colour scale
    above the table states all this.
    """
    out = [legend("0", "row max", ["#ffffff", "rgba(220,38,38,1)"],
                  "red: each token's attention from the row's last token (the query), relative to the row's "
                  "most-attended token" + (" (the first token is left uncoloured and out of the scale)"
                                           if suppress_first_token else "")
                  + "; blue outline: the ranked token; thin grey lines: token boundaries. "
                  "Hover a token for its attention."),
           "<table class='attnlens-multiples' style='border-collapse:collapse;font-family:sans-serif'>"]
    if title:
        out.append(f"<tr><th colspan='3' style='text-align:left'>{_html.escape(title)}</th></tr>")
    out.append("<tr><th>Token</th><th>Multiple of avg. attention</th><th style='text-align:left'>Row</th></tr>")
    cell = "border:1px solid #999;padding:2px 4px;"
    for row in rows:
        pattern = row.pattern.detach().float().cpu().clone()
        if suppress_first_token and pattern.numel() > 1:
            pattern[0] = 0.0
            total = float(pattern.sum())
            if total > 0:
                pattern /= total
        top = float(pattern.max()) if pattern.numel() else 0.0
        tokens = []
        for i, (token, p) in enumerate(zip(row.str_tokens, pattern.tolist())):
            alpha = p / top if top > 0 else 0.0
            outline = "outline:2px solid #1d4ed8;" if i == row.key else ""
            tokens.append(
                f"<span title='{p:.4f}' style='background-color:rgba(220,38,38,{alpha:.3f});"
                f"{outline}white-space:pre;border-right:1px solid rgba(0,0,0,0.18)'>{_row_token(token)}</span>"
            )
        word = word_of(row.str_tokens, row.key) if 0 <= row.key < len(row.str_tokens) else ""
        shown = _cell_token(row.token)
        if word and word != row.token.strip():
            shown += f" <span style='color:#666;font-size:85%'>(in &ldquo;{_html.escape(word)}&rdquo;)</span>"
        out.append(
            f"<tr><td style='{cell}'>{shown}</td>"
            f"<td style='{cell}text-align:right'>{row.multiple:.1f}</td>"
            f"<td style='{cell}text-align:left'>{''.join(tokens)}</td></tr>"
        )
    out.append("</table>")
    return HTMLView("".join(out), title=title, data={"rows": list(rows)})


def multiples_text(rows: Sequence["RankedMultiple"], title: str = "", context: int = 8) -> str:
    """A plain-text version of :func:`multiples_table`: each row's last ``context`` tokens
    (from the ranked token on, when it lies further back), the ranked token in brackets."""
    lines = [title] if title else []
    for row in rows:
        start = max(0, min(row.key - 2, row.query + 1 - context))
        shown = "".join(
            f"[{t}]" if i == row.key else t for i, t in enumerate(row.str_tokens[start:], start)
        )
        prefix = "..." if start > 0 else ""
        lines.append(
            f"{row.multiple:7.2f}  {row.token!r:<16} text {row.text_index} query {row.query} key {row.key}: "
            f"{prefix}{_label(shown)}"
        )
    return "\n".join(lines)


def show_description(layer: int, head: int, description: str) -> None:
    """Show a head's description, headed by its layer and head: Markdown in a notebook, printed to
    standard output elsewhere (called only for ``print_description=True``, where the user asked for it)."""
    if in_notebook():
        from IPython.display import Markdown, display

        display(Markdown(f"**Layer {layer}, head {head}**\n\n{description}"))
    else:
        print(f"Layer {layer}, head {head}:\n{description}")
        logger.debug("layer %d head %d: %s", layer, head, description)
