"""Records that convert to JSON and show themselves: :class:`Showable` and :class:`Record`.

The jobs records share live in a module each: JSON Lines files (:mod:`.json_lines`), JSON conversion
(:mod:`.plain`), which view draws a record (:mod:`.views`, filled by ``attnlens.viz`` through the
package root) and where a shown view goes (:mod:`.display`). Their names are re-exported here, so
``from attnlens.core.records import read_jsonl`` (and the others) keeps working.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .display import in_notebook, show_view
from .json_lines import damaged_lines, read_jsonl
from .plain import plain_fields, to_plain
from .views import register_view, view_of

__all__ = ["Record", "Showable", "damaged_lines", "in_notebook", "read_jsonl", "register_view", "show_view",
           "to_plain", "view_of"]


class Showable:
    """``view()``, ``show()`` and ``to_json()`` for a result class (a dataclass or a ``dict``).

    ``view(**options)`` returns the record's :class:`attnlens.viz.HTMLView` (offline: every
    script inlined); ``show(path=None, **options)`` displays it in a notebook and returns it
    elsewhere (see :func:`show_view`); ``to_json()`` gives JSON text (``to_dict()`` the object).
    """

    def view(self, **options: Any) -> Any:
        return view_of(self, **options)

    def show(self, path: str | os.PathLike | None = None, **options: Any) -> Any:
        return show_view(self.view(**options), path)

    def to_dict(self) -> Any:
        return plain_fields(self)

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("ensure_ascii", False)
        return json.dumps(self.to_dict(), **kwargs)


class Record(Showable, dict):
    """A result record: a plain ``dict`` (index it as one) that converts to JSON and shows itself.

    ``to_dict()`` gives the same keys with tensors as nested lists; ``to_json()``
    the JSON text (``json.dumps`` keyword arguments pass through); ``view()`` and
    ``show()`` as :class:`Showable` (a generation with its spans marked, influence as
    :func:`attnlens.viz.influence_view`).
    """

    def to_dict(self) -> dict[str, Any]:
        return {str(k): to_plain(v) for k, v in self.items()}

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("ensure_ascii", False)
        return json.dumps(self.to_dict(), **kwargs)
