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
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise error(f"cannot read {what} {str(file)!r}: {exc.strerror or exc}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{file.name}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise error(f"{where}: not a JSON object")
        rows.append((where, row))
    return rows
