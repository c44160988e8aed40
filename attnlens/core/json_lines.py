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


def damaged_lines(problems: list[str], limit: int = 10) -> str:
    """The first ``limit`` of a file's damaged-line descriptions, and how many more there are."""
    return "; ".join(problems[:limit]) + (f"; and {len(problems) - limit} more" if len(problems) > limit else "")
