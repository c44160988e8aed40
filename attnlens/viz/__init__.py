"""Views: interactive attention views (circuitsvis) and plots.

Every view function returns an :class:`HTMLView`: it renders in a notebook
(``_repr_html_``) and ``view.save(path)`` writes one self-contained HTML file.
circuitsvis views are built from circuitsvis' bundled script, inlined (its
``local_src``), never from a CDN, so saved files and notebooks render offline;
the bundle is inlined once per view however many parts it has.

The library never prints: :func:`show` displays a view in a notebook and logs
a text rendering elsewhere.

Every result of the library shows itself: ``record.show()`` displays its view in a
notebook and returns it elsewhere (an :class:`HTMLView`; ``record.show("out.html")``
also writes it), ``record.view()`` always returns it, ``record.to_json()`` gives JSON.
The view functions take those records too (``influence_view(al.influence_report(...))``).
Every view carries its colour scale.

Modules: :mod:`.view` (the view object, :func:`show`), :mod:`.circuits`
(circuitsvis parts), :mod:`.multiples` (AttentionData's tables),
:mod:`.patterns` (attention patterns, steering), :mod:`.influence` (Influence
and rollout), :mod:`.records` (each record's view). This package only re-exports them.
"""

from __future__ import annotations

from typing import Any

from .circuits import circuitsvis_html
from .influence import influence_figure, influence_tokens, influence_view
from .multiples import multiples_table, multiples_text, show_description
from .patterns import head_patterns, steering_view
from .records import head_grid_view, record_view, table_view, view_of
from .view import HTMLView, in_notebook, show

__all__ = [
    "HTMLView", "circuitsvis_html", "head_patterns", "in_notebook", "influence_figure", "influence_tokens",
    "influence_view", "multiples_table", "multiples_text", "show", "show_description", "steering_view",
    "head_grid_view", "record_view", "table_view", "view_of",
]

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
