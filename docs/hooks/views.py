"""The docs' pictures: every kind of view, rendered offline from the embedded model at build time.

``render_views()`` computes the views from the embedded model and returns them as
:class:`attnlens.viz.HTMLView` objects: ``influence`` (Influence and rollout of a span),
``head_patterns`` (one head over two texts), ``steering_diff`` (a layer unsteered, under
GUIDE, and the difference, side by side) and ``multiples`` (a head's ranked multiples). Each
carries its colour scale. circuitsvis' script and plotly.js are inlined, nothing comes
from the network. The mkdocs hooks:

- ``on_page_content`` puts a view's HTML in place of the marker ``<!-- view: NAME -->`` in
  a page (an unknown name fails the build), so the built page itself draws the view;
- ``on_post_build`` writes ``site/views/experiment/accuracy_vs_delta.html`` (plotly.js
  inlined, with its PNG and SVG beside it), the plot an experiment run writes, drawn
  by ``attnlens.experiments.plots`` from the French study's measured summary (the table on
  the experiments page), which the experiments page embeds in an ``<iframe>``.

``python docs/hooks/views.py OUT`` writes every view as a standalone HTML file into OUT
(``docs/images/render.py`` screenshots one for the README).
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

logger = logging.getLogger("mkdocs.hooks.views")

PROMPT = "Rewrite in French: Paris is the most visited city in the world."
FOCUS = "Rewrite in French:"
TEXTS = [
    "The cat sat on the mat because it was tired after chasing the mouse all day.",
    "Paris is the capital of France and Rome is the capital of Italy.",
]
MARKER = re.compile(r"<!-- view: ([a-z_]+) -->")

#: the French study's summary as measured on the embedded model (docs/experiments.md, "Results"):
#: condition, method, delta, mean, interval low, interval high, over 24 items
FRENCH_SUMMARY = [
    ("none", "none", 0.0, 0.79, 0.62, 0.92),
    ("guide@1", "guide", 1.0, 0.83, 0.67, 0.96),
    ("guide@2", "guide", 2.0, 0.96, 0.88, 1.00),
    ("emphatic", "emphatic", 0.0, 0.00, 0.00, 0.00),
]


def render_views() -> dict:
    """name -> HTMLView, computed from the embedded model."""
    import attnlens as al

    model = al.load_model()
    prompt = al.tokenize_prompt(model.tokenizer, PROMPT.replace(FOCUS, f"<!->{FOCUS}<-!>"))
    span = prompt.spans[0]  # tokens (1, 7): after <|im_start|>
    report = al.influence_report(model, PROMPT.replace(FOCUS, f"<?->{FOCUS}<-?>"), methods=("influence", "rollout"))
    ad = al.AttentionData(model, text_batch=TEXTS, min_length=4, max_length=20, seed=0)
    return {
        "influence": al.viz.influence_view(report, title="Influence of 'Rewrite in French:'"),
        "head_patterns": ad.patterns_view(3, 2, texts=[0, 1]),
        "steering_diff": al.steering_diff(model, prompt, 5, al.guide_plan(model, [span], delta=2.0), heads=[0, 1, 2]),
        "multiples": ad.get_ranked_multiples(3, 2, num_multiples=8).view(),
    }


def experiment_plot(folder: str | Path) -> Path:
    """``accuracy_vs_delta.html`` of the French study's measured summary, written into ``folder``."""
    from attnlens.experiments.metrics import Estimate
    from attnlens.experiments.plots import accuracy_vs_delta
    from attnlens.experiments.summary import ConditionSummary

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = [ConditionSummary(condition, method, delta, 24, 1, {"french": Estimate(mean, low, high, 24)})
               for condition, method, delta, mean, low, high in FRENCH_SUMMARY]
    return accuracy_vs_delta(summary, "french", folder / "accuracy_vs_delta.html",
                             title="French summaries: share of outputs detected as French")


_views: dict = {}


def on_pre_build(config, **kwargs) -> None:  # mkdocs hook
    _views.clear()
    _views.update(render_views())
    logger.info("rendered %d views from the embedded model", len(_views))


def on_page_content(html: str, page, config, files, **kwargs) -> str:  # mkdocs hook
    def view(match: re.Match) -> str:
        name = match.group(1)
        if name not in _views:
            raise KeyError(f"{page.file.src_path}: no view named {name!r} (known: {sorted(_views)})")
        return f'<div class="attnlens-view" data-view="{name}">\n{_views[name]._repr_html_()}\n</div>'

    return MARKER.sub(view, html)


def on_post_build(config, **kwargs) -> None:  # mkdocs hook
    experiment_plot(Path(config["site_dir"]) / "views" / "experiment")


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "views")
    for name, rendered in render_views().items():
        print(rendered.save(out / f"{name}.html"))
    print(experiment_plot(out / "experiment"))
