"""JSON Lines files: one JSON object per line, blank lines skipped."""

from __future__ import annotations

import json
import os
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


class Record(dict):
    """A result record: a plain ``dict`` (index it as one) that converts to JSON.

    ``to_dict()`` gives the same keys with tensors as nested lists; ``to_json()``
    the JSON text (``json.dumps`` keyword arguments pass through).
    """

    def to_dict(self) -> dict[str, Any]:
        return {str(k): to_plain(v) for k, v in self.items()}

    def to_json(self, **kwargs: Any) -> str:
        kwargs.setdefault("ensure_ascii", False)
        return json.dumps(self.to_dict(), **kwargs)


def damaged_lines(problems: list[str], limit: int = 10) -> str:
    """The first ``limit`` of a file's damaged-line descriptions, and how many more there are."""
    return "; ".join(problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")
