"""Attention pattern views: one head over sample texts, one layer unsteered and steered."""

from __future__ import annotations

import html as _html


from ..analysis.capture import PatternSamples, SteeringPatterns
from ..core.errors import AttnlensError
from .circuits import _label, _rounded, circuitsvis_html
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
