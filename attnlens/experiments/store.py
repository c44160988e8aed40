"""Rows on disk: one JSON line per generation (resumable), the run file, CSV."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


from ..core.errors import ExperimentError
from .config import ExperimentConfig

logger = logging.getLogger(__name__)

ROWS_FILE = "rows.jsonl"
SUMMARY_FILE = "summary.csv"
RUN_FILE = "run.json"
#: run settings that change outputs: a directory holds rows made with one set of them
# ----------------------------------------------------------------------------- rows on disk


def row_key(condition: str, item: str, generation: int) -> str:
    return f"{condition}|{item}|{generation}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a damaged line (an interrupted write) is dropped and the file repaired."""
    if not path.exists():
        return []
    rows, bad = [], 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict) and {"condition", "item", "generation"} <= row.keys():
                rows.append(row)
            else:
                bad += 1
    if bad:
        logger.warning("dropping %d damaged line(s) from %s", bad, path)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        tmp.replace(path)
    return rows


def _check_run_file(out: Path, config: ExperimentConfig, study: str, *, write: bool = True) -> None:
    run_file = out / RUN_FILE
    identity = {"study": study, **config.identity()}
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text())
        except json.JSONDecodeError:
            previous = None
        if isinstance(previous, dict):
            diff = [k for k in identity if previous.get(k) != identity[k]]
            if diff:
                detail = ", ".join(f"{k}={previous.get(k)!r} (now {identity[k]!r})" for k in diff)
                raise ExperimentError(
                    f"{str(out)!r} holds results made with other settings: {detail}; "
                    "choose another output directory or start afresh (--fresh)"
                )
    if write:
        run_file.write_text(json.dumps(identity, indent=1))



def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in fields})
