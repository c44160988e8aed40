"""Rows on disk: one JSON line per generation (resumable), the run file, CSV."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ..core import resumable
from ..core.errors import ExperimentError
from ..core.resumable import RowFile, RunRecord, ShardedRows
from .config import DIGEST_PREFIX, IDENTITY_FIELDS, ExperimentConfig

logger = logging.getLogger(__name__)

ROWS_FILE = "rows.jsonl"
SUMMARY_FILE = "summary.csv"
RUN_FILE = "run.json"
LOCK_FILE = ".attnlens.lock"
#: run settings that change outputs: a directory holds rows made with one set of them
# ----------------------------------------------------------------------------- rows on disk


def row_key(condition: str, item: str, generation: int) -> str:
    return f"{condition}|{item}|{generation}"


_ROW_FIELDS = ("condition", "item", "generation")


def _row_problem(row: Mapping[str, Any]) -> str | None:
    """What makes a JSON object not a row (RowFile's parser has already refused any line that is not an object)."""
    missing = [k for k in _ROW_FIELDS if k not in row]
    if missing:
        return f"not a row (no {', '.join(missing)})"
    if not isinstance(row["condition"], str) or not isinstance(row["item"], str):
        return "not a row (condition and item must be strings)"
    if not isinstance(row["generation"], int) or isinstance(row["generation"], bool) or row["generation"] < 0:
        return f"not a row (generation {row['generation']!r})"
    return None


def _key(row: Mapping[str, Any]) -> str:
    return row_key(row["condition"], row["item"], row["generation"])


#: an experiment's rows (:class:`~attnlens.core.resumable.RowFile` settings): every line one row, keyed by
#: (condition, item, generation); a damaged line is an error naming it
ROW_SETTINGS: dict[str, Any] = {"key": _key, "check": _row_problem, "damaged": "error", "error": ExperimentError,
                                "advice": "Fix or remove those lines, or start afresh (--fresh)"}


def rows_file(path: Path) -> RowFile:
    """An experiment's rows file (:data:`ROW_SETTINGS`)."""
    return RowFile(path, **ROW_SETTINGS)


def sharded_rows(path: Path, workers: Any) -> ShardedRows:
    """An experiment's rows over the workers of a sweep (:data:`ROW_SETTINGS`)."""
    return ShardedRows(path, workers, **ROW_SETTINGS)


def read_rows(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSONL file, in order.

    Every line must be one row: a JSON object with ``condition``, ``item`` and
    ``generation``, each key once. Anything else (invalid UTF-8, not JSON, another
    kind of JSON, a repeated row) is an :class:`ExperimentError` that names the
    file and the line numbers; nothing is dropped quietly. The one exception is
    the last line when it has no newline: a write cut off by a crash. With
    ``repair=True`` it is removed from the file (a WARNING names the line; its
    generation runs again); without, it is reported like any damaged line. A
    last line that is a whole row and only lacks its newline is kept and, with
    ``repair=True``, its newline written.
    """
    return rows_file(Path(path)).read(repair=repair)


def append_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Append rows as whole lines in one write, then fsync: a crash leaves at most one cut-off last line."""
    rows_file(Path(path)).append(rows)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half of it."""
    resumable.write_atomic(path, text, error=ExperimentError)


def run_lock(out: Path) -> AbstractContextManager[None]:
    """Hold ``out``'s lock for a run: a second run on the same folder fails at once instead of doubling rows."""
    return resumable.exclusive(out, lock_file=LOCK_FILE, error=ExperimentError)


def run_record(out: Path) -> RunRecord:
    """The folder's run file."""
    return RunRecord(Path(out) / RUN_FILE, error=ExperimentError, what=f"the rows in {str(out)!r}",
                     advice="restore it, or start afresh (--fresh)")


def fingerprint(value: Any) -> str:
    """The SHA-256 of ``value`` in a canonical JSON form: what a run's data looked like."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _defaults(config: ExperimentConfig) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


def _shown(value: Any) -> str:
    if isinstance(value, str) and value.startswith(DIGEST_PREFIX):
        return f"a file whose content has {value[:len(DIGEST_PREFIX) + 12]}..."
    return repr(value)


def _check_run_file(out: Path, config: ExperimentConfig, study: str, *, write: bool = True,
                    data: Mapping[str, str] | None = None) -> None:
    """Refuse a folder whose rows were made with other settings or other data; record them for a new one.

    ``data`` maps each part of the study's data (an item, the haystack) to its
    :func:`fingerprint`; a part in both the folder's run file and this run must have
    the same fingerprint (a data file edited in place is refused), while parts in only
    one of them are fine (a larger ``limit`` adds items). A study's own setting the run file
    lacks (written by an older attnlens) is taken as its default; a shared one (``seed``,
    ``model``, ...: every attnlens has written them) is refused, as nothing says what the rows
    were made with. ``pasta_heads`` is compared by content (:func:`~.config.content_digest`);
    a run file that recorded its path is taken to match the same path.
    """
    record = run_record(out)
    run_file = record.path
    identity = {"study": study, **config.identity()}
    data = dict(data or {})
    previous = record.read()
    if previous is not None:
        missing = [k for k in ("study", *IDENTITY_FIELDS) if k in identity and k not in previous]
        if missing:
            raise ExperimentError(
                f"{str(run_file)!r} lacks {', '.join(missing)}, which every attnlens writes: it cannot say "
                f"what the rows in {str(out)!r} were made with (a hand edit or another program's file?); "
                "restore it, or start afresh (--fresh)"
            )
        defaults = _defaults(config)
        before = {k: previous.get(k, defaults.get(k)) for k in identity}
        heads = before.get("pasta_heads")
        if (isinstance(heads, str) and not heads.startswith(DIGEST_PREFIX) and config.pasta_heads is not None
                and heads == str(config.pasta_heads)):
            before["pasta_heads"] = identity["pasta_heads"]  # an older run file named the same file by path
        diff = resumable.changed(before, identity, keys=identity)
        if diff:
            detail = ", ".join(f"{k}={_shown(before[k])} (now {_shown(identity[k])})" for k in diff)
            raise ExperimentError(
                f"{str(out)!r} holds results made with other settings: {detail}; "
                "choose another output directory or start afresh (--fresh)"
            )
        recorded = previous.get("data") if isinstance(previous.get("data"), dict) else {}
        changed = sorted(k for k in data if k in recorded and recorded[k] != data[k])
        if changed:
            raise ExperimentError(
                f"{str(out)!r} holds results made from other data: {', '.join(changed[:5])}"
                + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
                + f" changed since ({config.dataset or 'the shipped data'}); "
                "choose another output directory or start afresh (--fresh)"
            )
        merged = {**recorded, **data}
        if write and (merged != recorded or any(previous.get(k, object()) != identity[k] for k in identity)):
            record.write({**previous, **identity, "data": merged})
        return
    if write:
        record.write({**identity, "data": data})


#: the key of a run file that holds the model's identity (:func:`~.provenance.model_identity`)
MODEL_KEY = "model_content"


def _model_shown(identity: Mapping[str, Any]) -> str:
    parts = [str(identity.get("name"))]
    if identity.get("n_layers") is not None:
        parts.append(f"{identity['n_layers']} layers")
    if identity.get("dtype"):
        parts.append(str(identity["dtype"]))
    return f"{', '.join(parts)}, weights {str(identity.get('sha256'))[:12]}..."


def check_model(out: Path, identity: Mapping[str, Any], *, write: bool = True) -> None:
    """Refuse a folder whose rows were made with another model (other weights or config, whatever its
    name: a model passed as an object counts by its content); record the model for a new folder.

    ``identity`` is :func:`~.provenance.model_identity` of the model about to run. A run file from an
    attnlens that did not record it gets it now (a WARNING says the rows already there are not checked).
    """
    run = run_record(out)
    run_file = run.path
    record = run.read() or {}
    previous = record.get(MODEL_KEY)
    if previous is not None:
        if not isinstance(previous, dict) or not isinstance(previous.get("sha256"), str):
            raise ExperimentError(f"{str(run_file)!r} has a damaged {MODEL_KEY!r} entry ({previous!r}); "
                                  "restore it, or start afresh (--fresh)")
        if previous["sha256"] != identity["sha256"]:
            raise ExperimentError(
                f"{str(out)!r} holds results made with another model: {_model_shown(previous)} "
                f"(now {_model_shown(identity)}); its weights or config differ, whatever its name. "
                "Pass the model the rows were made with, choose another output directory or start afresh (--fresh)"
            )
        return
    rows = Path(out) / ROWS_FILE
    if rows.exists() and rows.stat().st_size:
        logger.warning("%s: its rows were made before attnlens recorded the model's content, so they cannot be "
                       "checked against this model (%s); it is recorded from now on", out, _model_shown(identity))
    if write:
        run.write({**record, MODEL_KEY: dict(identity)})


def record_provenance(out: Path, provenance: Mapping[str, Any]) -> None:
    """Record what made the run (model, attnlens, package versions) in the folder's run file; a rerun
    with another provenance keeps the earlier ones under ``earlier_provenance``."""
    run = run_record(out)
    try:
        record = run.read()
    except ExperimentError:
        return  # _check_run_file has refused a damaged one already
    if record is None:
        return  # a missing one is not ours to make here
    provenance = json.loads(json.dumps(provenance, default=str))
    previous = record.get("provenance")
    if previous == provenance:
        return
    if isinstance(previous, dict):
        earlier = record.get("earlier_provenance") if isinstance(record.get("earlier_provenance"), list) else []
        record["earlier_provenance"] = [*earlier, previous]
    record["provenance"] = provenance
    run.write(record)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in fields})
