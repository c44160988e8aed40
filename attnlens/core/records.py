"""JSON Lines files: one JSON object per line, blank lines skipped."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import AttnlensError


def read_jsonl(
    path: str | os.PathLike, *, what: str = "records", error: type[AttnlensError] = AttnlensError
) -> list[tuple[str, dict[str, Any]]]:
    """``(where, object)`` for each line of ``path``; ``where`` reads ``"name.jsonl, line N"``.

    A file that cannot be read, a line that is not JSON or not an object raise ``error``
    naming the file and line.
    """
    file = Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what} {str(file)!r}: {exc.strerror or exc}") from None
    rows = []
    if data.startswith(b"\xef\xbb\xbf"):  # a byte-order mark some editors write
        data = data[3:]
    # split on newlines only: a JSON string may hold U+2028 and other characters str.splitlines splits at
    for number, raw in enumerate(data.split(b"\n"), 1):
        where = f"{file.name}, line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{where}: invalid UTF-8 at byte {exc.start}") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise error(f"{where}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise error(f"{where}: not a JSON object (a {type(row).__name__})")
        rows.append((where, row))
    return rows


def to_plain(value: Any) -> Any:
    """``value`` with tensors (and numpy arrays) as nested lists, tuples as lists, dataclasses as dicts:
    something ``json.dumps`` accepts. Objects with a ``to_dict()`` are converted through it."""
    import dataclasses

    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors, numpy arrays and scalars
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    raise TypeError(f"cannot convert a {type(value).__name__} to JSON")


def damaged_lines(problems: list[str], limit: int = 10) -> str:
    """The first ``limit`` of a file's damaged-line descriptions, and how many more there are."""
    return "; ".join(problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")


# ============================================================================ records that show themselves
#
# A result's view lives in ``attnlens.viz``, above the layers that make most results, so the
# views register themselves here by the record's class (``register_view``) and a record finds
# its view through the registry. The first lookup imports ``attnlens.viz`` by name, which
# registers every view; nothing here imports the views' code.

_VIEWS: dict[type, Callable[..., Any]] = {}


def register_view(cls: type, view: Callable[..., Any]) -> None:
    """Make ``view(record, **options)`` (returning an :class:`attnlens.viz.HTMLView`) the view of ``cls``."""
    _VIEWS[cls] = view


def _view_function(record: Any) -> Callable[..., Any] | None:
    for klass in type(record).__mro__:
        if klass in _VIEWS:
            return _VIEWS[klass]
    return None


def view_of(record: Any, **options: Any) -> Any:
    """The view of ``record`` (an :class:`attnlens.viz.HTMLView`); a record with no view raises."""
    function = _view_function(record)
    if function is None:
        importlib.import_module("attnlens.viz")  # the views register themselves on import
        function = _view_function(record)
    if function is None:
        raise AttnlensError(f"a {type(record).__name__} has no view")
    return function(record, **options)


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
        import dataclasses

        if dataclasses.is_dataclass(self):
            return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if isinstance(self, dict):
            return {str(k): to_plain(v) for k, v in self.items()}
        if isinstance(self, list):
            return [to_plain(v) for v in self]
        raise TypeError(f"cannot convert a {type(self).__name__} to JSON")

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
