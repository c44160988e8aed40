"""The docs' pictures: every kind of view, rendered offline from the embedded model.

``render_views(folder)`` writes one standalone HTML file per view (circuitsvis and
plotly inlined, nothing from the network): ``influence.html``, ``head_patterns.html``,
``steering_diff.html`` and ``experiment/accuracy_vs_delta.html`` (the experiment plot of the
French study's measured summary, the table on the experiments page, with the
``plotly.min.js`` the experiment plots share). The mkdocs hook
``on_post_build`` writes them into ``site/views/``, where the pages embed them.

``python docs/hooks/views.py OUT`` renders them into OUT (``docs/images/render.py``
uses this to make the README's picture).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

logger = logging.getLogger("mkdocs.hooks.views")

#: the files the pages embed, relative to ``site/views/``
VIEWS = ("influence.html", "head_patterns.html", "steering_diff.html", "experiment/accuracy_vs_delta.html")

PROMPT = "Rewrite in French: Paris is the most visited city in the world."
TEXTS = [
    "The cat sat on the mat because it was tired after chasing the mouse all day.",
    "Paris is the capital of France and Rome is the capital of Italy.",
]


def render_views(folder: str | Path) -> list[Path]:
    """Render every view into ``folder`` from the embedded model; returns the files written."""
    import attnlens as al
    from attnlens.experiments.plots import accuracy_vs_delta

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = al.load_model()
    tokens = model.tokenizer(PROMPT)["input_ids"]
    str_tokens = model.tokenizer.convert_ids_to_tokens(tokens)
    span = (0, 4)  # "Rewrite in French:"
    trace = al.trace_influence(model, tokens, [span], methods=("influence", "rollout"))
    curves = {"influence": trace["influence"][0], "rollout": trace["rollout"][0]}
    written = [al.viz.influence_view(curves, str_tokens, title="Influence of 'Rewrite in French:'")
               .save(folder / "influence.html")]
    ad = al.AttentionData(model, text_batch=TEXTS, min_length=4, max_length=20, seed=0)
    written.append(ad.patterns_view(3, 2, texts=[0, 1]).save(folder / "head_patterns.html"))
    diff = al.steering_diff(model, PROMPT, 5, al.guide_plan(model, [span], delta=2.0), heads=[0, 1, 2])
    written.append(diff.save(folder / "steering_diff.html"))
    experiment = folder / "experiment"
    experiment.mkdir(exist_ok=True)
    written.append(accuracy_vs_delta(_french_summary(), "french", experiment / "accuracy_vs_delta.html",
                                     title="French summaries: share of outputs detected as French"))
    return written


#: the French study's summary as measured on the embedded model (docs/experiments.md, "Results"):
#: condition, method, delta, mean, interval low, interval high, over 24 items
FRENCH_SUMMARY = [
    ("none", "none", 0.0, 0.79, 0.62, 0.92),
    ("guide@1", "guide", 1.0, 0.83, 0.67, 0.96),
    ("guide@2", "guide", 2.0, 0.96, 0.88, 1.00),
    ("emphatic", "emphatic", 0.0, 0.00, 0.00, 0.00),
]


def _french_summary() -> list:
    from attnlens.experiments.metrics import Estimate
    from attnlens.experiments.summary import ConditionSummary

    return [ConditionSummary(condition, method, delta, 24, 1, {"french": Estimate(mean, low, high, 24)})
            for condition, method, delta, mean, low, high in FRENCH_SUMMARY]


def on_post_build(config, **kwargs) -> None:  # mkdocs hook
    written = render_views(Path(config["site_dir"]) / "views")
    logger.info("rendered %d views from the embedded model", len(written))


if __name__ == "__main__":
    for path in render_views(sys.argv[1] if len(sys.argv) > 1 else "views"):
        print(path)
