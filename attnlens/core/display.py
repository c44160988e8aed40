"""Notebook display: where a view goes when a record is shown."""

from __future__ import annotations

import os
from typing import Any


def in_notebook() -> bool:
    """Whether the code runs in a Jupyter-like kernel (where HTML output is shown)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_view(view: Any, path: str | os.PathLike | None = None) -> Any:
    """The rule every ``record.show()`` follows.

    ``path`` given: the view is written there as one standalone HTML file. In a notebook the
    view is displayed and ``None`` returned (so it is not shown twice); elsewhere the view is
    returned (an :class:`attnlens.viz.HTMLView`: ``.save(path)``, ``.to_html()``, ``.data``).
    """
    if path is not None:
        view.save(path)
    if in_notebook():
        from IPython.display import display

        display(view)
        return None
    return view
