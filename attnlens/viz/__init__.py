"""Views: interactive attention views (circuitsvis) and plots.

Every view function returns an :class:`HTMLView`: it renders in a notebook
(``_repr_html_``) and ``view.save(path)`` writes one self-contained HTML file.
circuitsvis views are built from circuitsvis' bundled script, inlined (its
``local_src``), never from a CDN, so saved files and notebooks render offline;
the bundle is inlined once per view however many parts it has.

The library never prints: :func:`show` displays a view in a notebook and logs
a text rendering elsewhere.
"""

from __future__ import annotations

import html as _html
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.validate import is_int
from ..analysis.capture import PatternSamples, SteeringPatterns
from ..core.errors import AttnlensError

if TYPE_CHECKING:
    from ..analysis.multiples import RankedMultiple

logger = logging.getLogger(__name__)


# ============================================================================ shared: the view object


@dataclass
class HTMLView:
    """A rendered view: ``body`` is an HTML fragment that needs nothing from the network.

    ``data`` holds the numbers behind the view (tensors, token strings) for further use.
    """

    body: str
    title: str = ""
    data: dict[str, Any] = field(default_factory=dict, repr=False)

    def _repr_html_(self) -> str:
        return self.body

    def to_html(self) -> str:
        """A complete standalone HTML document."""
        title = _html.escape(self.title or "attnlens view")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{title}</title>\n</head>\n<body>\n{self.body}\n</body>\n</html>\n"
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the view as a self-contained HTML file (parent folders are created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_html(), encoding="utf-8")
        tmp.replace(path)
        return path

    def __repr__(self) -> str:
        return f"HTMLView(title={self.title!r}, {len(self.body)} characters)"


def in_notebook() -> bool:
    """Whether the code runs in a Jupyter-like kernel (where HTML output is shown)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show(view: Any, text: str | None = None) -> None:
    """Display ``view`` in a notebook; elsewhere print ``text`` (if given) to standard output.

    Called only where the user asked for output (``display=True``), so this prints
    outside a notebook; the record is logged at DEBUG too.
    """
    if in_notebook():
        from IPython.display import display

        display(view)
    elif text:
        print(text)
        logger.debug("%s", text)


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


# ============================================================================ AttentionData and steering views


def _cell_token(token: str) -> str:
    shown = token.strip()
    return _html.escape(shown if shown else repr(token))


def multiples_table(
    rows: Sequence["RankedMultiple"], title: str = "", *, suppress_first_token: bool = True
) -> HTMLView:
    """The table of ranked multiples: token, multiple, then the row's tokens coloured by attention.

    A cell's red is the token's attention relative to the row's most-attended token;
    the ranked token's cell is outlined. With ``suppress_first_token`` the first
    token is shown uncoloured and the rest of the row renormalised without it.
    """
    out = ["<table class='attnlens-multiples' style='border-collapse:collapse;font-family:sans-serif'>"]
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
                f"{outline}margin:0 1px;padding:0 2px'>{_cell_token(token)}</span>"
            )
        out.append(
            f"<tr><td style='{cell}'>{_cell_token(row.token)}</td>"
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


def head_patterns(samples: PatternSamples) -> HTMLView:
    """One head's attention pattern over sample texts, one interactive circuitsvis view per text.

    Args:
        samples: the patterns to show, from :meth:`attnlens.AttentionData.pattern_samples`
            (``ad.patterns_view(layer, head)`` computes and shows in one call).

    ``view.data`` holds ``patterns`` (``{text index: [query, key]}``), ``layer`` and ``head``.
    """
    import circuitsvis as cv

    if not isinstance(samples, PatternSamples):
        raise AttnlensError(
            f"head_patterns takes the PatternSamples of AttentionData.pattern_samples(layer, head), got "
            f"{type(samples).__name__}; ad.patterns_view(layer, head) computes and shows them in one call"
        )
    layer, head = samples.layer, samples.head
    parts, shown = [], {}
    for index, tokens, pattern, preview in zip(samples.texts, samples.tokens, samples.patterns, samples.previews):
        shown[index] = pattern
        view = cv.attention.attention_heads(
            attention=_rounded(pattern[None]),
            tokens=[_label(t) for t in tokens],
            attention_head_names=[f"L{layer}H{head}"],
            mask_upper_tri=True,
        )
        parts.append((f"text {index}: {preview}", view))
    title = f"Layer {layer} head {head}: attention patterns" + (" (first token hidden)" if samples.first_token_hidden else "")
    body = f"<h3>{_html.escape(title)}</h3>\n" + circuitsvis_html(parts)
    return HTMLView(body, title=title, data={"patterns": shown, "layer": layer, "head": head})


def steering_view(captured: SteeringPatterns) -> HTMLView:
    """One layer's attention unsteered, under steering, and the difference, as interactive views.

    Args:
        captured: the patterns, from :func:`attnlens.analysis.capture.steering_patterns`
            (:func:`attnlens.steering_diff` captures and shows in one call).

    The view has three parts: unsteered, steered, and steered minus unsteered (red
    where steering raised attention, blue where it lowered it). ``view.data`` holds
    the ``unsteered`` and ``steered`` patterns (``[head, query, key]``) and ``tokens``.
    """
    import circuitsvis as cv

    layer, chosen = captured.layer, captured.heads
    unsteered, steered, str_tokens = captured.unsteered, captured.steered, captured.str_tokens
    diff = steered - unsteered
    labels = [_label(t) for t in str_tokens]
    names = [f"L{layer}H{h}" for h in chosen]
    bound = max(float(diff.abs().max()), 1e-6)
    parts = [
        ("unsteered", cv.attention.attention_heads(
            attention=_rounded(unsteered), tokens=labels, attention_head_names=names, mask_upper_tri=True)),
        ("steered", cv.attention.attention_heads(
            attention=_rounded(steered), tokens=labels, attention_head_names=names, mask_upper_tri=True)),
        (f"steered - unsteered (max |change| {bound:.3f})", cv.attention.attention_heads(
            attention=_rounded(diff), tokens=labels, attention_head_names=names, max_value=bound,
            min_value=-bound, positive_color="red", negative_color="blue", mask_upper_tri=True)),
    ]
    title = f"Layer {layer}: attention unsteered vs steered"
    body = f"<h3>{_html.escape(title)}</h3>\n" + circuitsvis_html(parts)
    return HTMLView(
        body,
        title=title,
        data={"unsteered": unsteered, "steered": steered, "tokens": str_tokens, "heads": chosen, "layer": layer},
    )


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


_CAPTURE_AND_SHOW = {
    "steering_diff": "attnlens.steering_diff(model, tokens, layer, plan)",
}


def __getattr__(name: str) -> Any:
    """Views take data and never run a model; the calls that capture and then show live in the API."""
    if name in _CAPTURE_AND_SHOW:
        raise AttributeError(
            f"attnlens.viz.{name} is not a view: views take captured data and never run the model. "
            f"Use {_CAPTURE_AND_SHOW[name]}, or steering_view(steering_patterns(...))"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
