"""The view object every view function returns, and :func:`show`."""

from __future__ import annotations

import html as _html
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.display import in_notebook

logger = logging.getLogger(__name__)


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
