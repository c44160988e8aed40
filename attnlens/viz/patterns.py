"""Attention pattern views: one head over sample texts, one layer unsteered and steered."""

from __future__ import annotations

import html as _html
from collections.abc import Sequence


from ..analysis.capture import PatternSamples, SteeringPatterns
from ..core.errors import AttnlensError
from .circuits import LOWERED, POSITIVE, RAISED, _label, _rounded, circuitsvis_html, legend, pattern_legend, span_label
from .view import HTMLView


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
            mask_upper_tri=True, min_value=0.0, max_value=1.0, positive_color=POSITIVE, negative_color=RAISED,
        )
        parts.append((f"text {index}: {preview}", view))
    title = f"Layer {layer} head {head}: attention patterns" + (" (first token hidden)" if samples.first_token_hidden else "")
    body = f"<h3>{_html.escape(title)}</h3>\n{pattern_legend()}\n" + circuitsvis_html(parts)
    return HTMLView(body, title=title, data={"patterns": shown, "layer": layer, "head": head})


def _ranges(keys: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted positions as half-open runs: ``[1, 2, 3, 7]`` -> ``[(1, 4), (7, 8)]``."""
    out: list[tuple[int, int]] = []
    for k in sorted(set(keys)):
        if out and out[-1][1] == k:
            out[-1] = (out[-1][0], k + 1)
        else:
            out.append((k, k + 1))
    return out


def steering_view(captured: SteeringPatterns, *, system_prompt: bool = False) -> HTMLView:
    """One layer's attention unsteered, under steering, and the difference, side by side.

    Args:
        captured: the patterns, from :func:`attnlens.analysis.capture.steering_patterns`
            (:func:`attnlens.steering_diff` captures and shows in one call).

    Three interactive views in a row (they wrap on a narrow page): unsteered, steered (both
    white at 0 to blue at 1), and steered minus unsteered (red where steering raised
    attention, blue where it lowered it, white where nothing changed, scaled to the largest
    change). Each has its colour scale beside it; the steered keys are marked ``⟦ ⟧`` in the
    token labels and named above the views. ``view.data`` holds the ``unsteered`` and
    ``steered`` patterns (``[head, query, key]``), ``tokens``, ``heads``, ``layer`` and
    ``steered_spans`` (half-open token ranges). A chat's template-added system prompt
    (``captured.system_tokens``) is left out, and the page says so, unless ``system_prompt=True``;
    ``view.data`` keeps the full patterns either way.
    """
    import circuitsvis as cv

    layer, chosen = captured.layer, captured.heads
    unsteered, steered, str_tokens = captured.unsteered, captured.steered, captured.str_tokens
    hidden = 0 if system_prompt else min(int(getattr(captured, "system_tokens", 0) or 0), len(str_tokens) - 1)
    keys = [k - hidden for k in getattr(captured, "steered_keys", ()) if k >= hidden]
    shown_unsteered, shown_steered = unsteered[:, hidden:, hidden:], steered[:, hidden:, hidden:]
    diff = shown_steered - shown_unsteered
    spans = _ranges(keys)
    labels = [_label(t) for t in str_tokens[hidden:]]
    for start, end in spans:
        labels = span_label(labels, start, end)
    names = [f"L{layer}H{h}" for h in chosen]
    bound = max(float(diff.abs().max()), 1e-6)
    pattern = {"min_value": 0.0, "max_value": 1.0, "positive_color": POSITIVE, "negative_color": RAISED,
               "mask_upper_tri": True}
    parts = [
        ("unsteered", cv.attention.attention_heads(
            attention=_rounded(shown_unsteered), tokens=labels, attention_head_names=names, **pattern)),
        ("steered", cv.attention.attention_heads(
            attention=_rounded(shown_steered), tokens=labels, attention_head_names=names, **pattern)),
        (f"steered - unsteered (max |change| {bound:.3f})", cv.attention.attention_heads(
            attention=_rounded(diff), tokens=labels, attention_head_names=names, max_value=bound,
            min_value=-bound, positive_color=RAISED, negative_color=LOWERED, mask_upper_tri=True)),
    ]
    change = legend(f"-{bound:.3g}", f"+{bound:.3g}", [LOWERED, "#ffffff", RAISED],
                    "red: steering raised the attention of the query (row) on the key (column); blue: lowered "
                    "it; white: no change. Scaled to the largest change.", middle="0")
    if spans:
        named = "; ".join(f"tokens [{a + hidden}, {b + hidden}) {''.join(str_tokens[a + hidden:b + hidden])!r}"
                          for a, b in spans)
        marked = (f"<p class='attnlens-steered' style='font:13px sans-serif'><b>Steered keys</b> (marked "
                  f"\u27e6 \u27e7 in the labels): {_html.escape(named)}</p>")
    else:
        marked = ("<p class='attnlens-steered' style='font:13px sans-serif'>The steered keys are not known for "
                  "a steering context; pass a BiasPlan (or a Prompt) to mark them.</p>")
    if hidden:
        marked += (f"\n<p style='font:12px sans-serif;color:#555'>The chat template's own system prompt ({hidden} "
                   "tokens) is left out of the grids; <code>system_prompt=True</code> shows it.</p>")
    title = f"Layer {layer}: attention unsteered vs steered"
    body = (f"<h3>{_html.escape(title)}</h3>\n{marked}\n"
            + circuitsvis_html(parts, after=[pattern_legend(), pattern_legend(), change], columns=True))
    return HTMLView(
        body,
        title=title,
        data={"unsteered": unsteered, "steered": steered, "tokens": str_tokens, "heads": chosen, "layer": layer,
              "steered_spans": [(a + hidden, b + hidden) for a, b in spans], "hidden_tokens": hidden},
    )
