"""JSON Lines files: one JSON object per line, blank lines skipped.

:func:`parse_line` is the one parser of a line of every JSON Lines file attnlens reads
(:func:`read_jsonl` here, and :class:`attnlens.core.resumable.RowFile`'s rows files): it decodes
UTF-8, parses JSON (a line nested too deeply is damaged, not a crash) and checks that the line is
an object. A damaged line raises :class:`JSONLineError`, whose message names the file, the line
number and what is wrong, e.g. ``"rows.jsonl, line 3: not valid JSON (Expecting value)"``; its
``problem`` (``"not valid JSON (Expecting value)"``) is what a reader listing several damaged
lines shows after ``"line 3: "`` (see :func:`damaged_lines`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import AttnlensError


class JSONLineError(AttnlensError):
    """A damaged line of a JSON Lines file: ``"<file name>, line <n>: <problem>"``.

    ``path``, ``line_number`` and ``problem`` (what is wrong, without the file and line) are kept."""

    def __init__(self, path: str | os.PathLike, line_number: int, problem: str) -> None:
        self.path, self.line_number, self.problem = Path(path), line_number, problem
        super().__init__(f"{line_place(path, line_number)}: {problem}")


def line_place(path: str | os.PathLike, line_number: int) -> str:
    """Where a line is, in messages: ``"name.jsonl, line N"``."""
    return f"{Path(path).name}, line {line_number}"


def not_an_object(value: Any) -> str | None:
    """What is wrong with a parsed line that is not a JSON object (None when it is one)."""
    return None if isinstance(value, dict) else f"not a JSON object (a {type(value).__name__})"


def parse_line(raw: bytes | str, *, path: str | os.PathLike, line_number: int) -> dict[str, Any] | None:
    """The object on one line of the JSON Lines file ``path`` (``raw`` without its newline); None for
    a blank line. A line that is not UTF-8, not JSON, nested too deeply or not an object raises
    :class:`JSONLineError` naming the file and line."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONLineError(path, line_number, f"invalid UTF-8 at byte {exc.start}") from None
    else:
        text = raw
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONLineError(path, line_number, f"not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise JSONLineError(path, line_number, "not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # an integer too long for Python to convert
        raise JSONLineError(path, line_number, f"not valid JSON ({exc})") from None
    problem = not_an_object(row)
    if problem is not None:
        raise JSONLineError(path, line_number, problem)
    return row


def read_jsonl(
    path: str | os.PathLike, *, what: str = "records", error: type[AttnlensError] = AttnlensError
) -> list[tuple[str, dict[str, Any]]]:
    """``(where, object)`` for each line of ``path``; ``where`` reads ``"name.jsonl, line N"``.

    A file that cannot be read, a line that is not JSON or not an object (see :func:`parse_line`)
    raise ``error`` naming the file and line.
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
        try:
            row = parse_line(raw, path=file, line_number=number)
        except JSONLineError as exc:
            raise error(str(exc)) from None
        if row is not None:
            rows.append((line_place(file, number), row))
    return rows


def damaged_lines(problems: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` of a file's damaged-line descriptions (``"line N: <problem>"``, the problem
    as :class:`JSONLineError` has it), and how many more there are."""
    return "; ".join(problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")


__all__ = ["JSONLineError", "damaged_lines", "line_place", "not_an_object", "parse_line", "read_jsonl"]
