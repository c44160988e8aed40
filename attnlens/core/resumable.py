"""One resumable run on disk: what made it, its keyed rows appended atomically, shards and their merge.

Every result a rerun continues goes through this module: an experiment's ``rows.jsonl``
and ``run.json``, ``attnlens batch``'s results and ``<results>.run.json``, a distributed
sweep's part files and their merge, a comparison's or a strength search's saved outputs,
and a strength search's saved JSON.

- :class:`RowFile`: a JSON Lines file of rows (JSON objects), each with an optional key.
  Every line is read by :func:`attnlens.core.json_lines.parse_line`, the parser of every JSON
  Lines file; reading names the file and the line numbers of what is wrong (invalid UTF-8,
  not valid JSON, not a JSON object, not a row, a repeated key); ``damaged="error"`` makes that an
  error (nothing is dropped quietly), ``"skip"`` leaves such lines out with a WARNING. The
  last line without a newline that is not a row is a write cut off by a crash: the file's
  owner (``read(repair=True)``) cuts it off (a WARNING names it; its row is computed again),
  another reader ignores it (``tolerate_torn=True``) or reports it. :meth:`RowFile.append`
  writes a batch of rows as whole lines in one ``write`` on an ``O_APPEND`` descriptor and
  fsyncs it, under a per-file lock of the process: a crash leaves at most one cut-off last
  line, and concurrent writers (threads, or processes appending to the same file) never
  interleave parts of lines.
- :class:`RunRecord`: a JSON object file recording what made the rows (settings, model,
  data). Damaged, it is an error naming it and is never replaced; :func:`changed` lists the
  settings that differ, so a rerun with other settings or another model is refused.
- :func:`write_atomic`: a whole file through a temporary file and a rename.
- :func:`exclusive`: one run at a time on a folder (a :mod:`filelock` lock taken without
  waiting): a second run fails at once instead of doubling rows.
- :class:`ShardedRows`: one sweep's rows over workers (anything with ``rank``,
  ``world_size``, ``distributed``, ``is_main`` and ``barrier()``, such as
  :class:`attnlens.runtime.distributed.Workers`): each worker appends to its own part file,
  and :meth:`ShardedRows.merge` has rank 0 write the merged file (one row per key, ordered)
  and remove the parts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol

from filelock import FileLock, Timeout

from .errors import AttnlensError
from .json_lines import JSONLineError, damaged_lines, not_an_object, parse_line

logger = logging.getLogger(__name__)

#: a function naming what is wrong with a parsed line (None: it is a row)
Check = Callable[[Any], "str | None"]
#: what keys a row (rows with the same key are one row)
Key = Callable[[Mapping[str, Any]], Hashable]

PARTS_DIR = "parts"


#: the first ``limit`` of a file's damaged-line descriptions, and how many more there are
#: (:func:`attnlens.core.json_lines.damaged_lines`)
shown_problems = damaged_lines


def is_object(row: Any) -> str | None:
    """The default :data:`Check`: a row is a JSON object (:func:`parse_line` already refuses any other line)."""
    return not_an_object(row)


def _parse(raw: bytes, path: Path, number: int, check: Check) -> tuple[dict[str, Any] | None, str | None]:
    """``(row, problem)`` of line ``number``; ``(None, None)`` for a blank line.

    The line is read by :func:`~attnlens.core.json_lines.parse_line` (the parser of every JSON Lines
    file: UTF-8, JSON, nesting depth, an object); ``problem`` is what it or ``check`` finds wrong."""
    try:
        row = parse_line(raw, path=path, line_number=number)
    except JSONLineError as exc:
        return None, exc.problem
    if row is None:
        return None, None
    return row, check(row)


_APPEND_LOCKS: dict[str, threading.Lock] = {}
_APPEND_LOCKS_GUARD = threading.Lock()


def _append_lock(path: Path) -> threading.Lock:
    name = os.path.abspath(path)
    with _APPEND_LOCKS_GUARD:
        return _APPEND_LOCKS.setdefault(name, threading.Lock())


class RowFile:
    """A JSON Lines file of rows; see the module docstring.

    ``key`` keys a row (a repeated key in the file is a damaged line: the row was written
    twice); ``check`` names what is wrong with a parsed JSON object that is not a row (default:
    nothing; a line that is not a JSON object is refused before it); ``damaged``: ``"error"`` or ``"skip"``; ``error``: the exception raised;
    ``advice``: the end of its message (how to fix the file)."""

    def __init__(self, path: str | os.PathLike, *, key: Key | None = None, check: Check = is_object,
                 damaged: str = "error", error: type[AttnlensError] = AttnlensError,
                 advice: str = "Fix or remove those lines, or start afresh") -> None:
        if damaged not in ("error", "skip"):
            raise AttnlensError(f"damaged must be 'error' or 'skip', got {damaged!r}")
        self.path = Path(path)
        self.key, self.check, self.damaged, self.error, self.advice = key, check, damaged, error, advice

    def __repr__(self) -> str:
        return f"RowFile({str(self.path)!r})"

    # ------------------------------------------------------------------ reading
    def read(self, *, repair: bool = False, tolerate_torn: bool = False) -> list[dict[str, Any]]:
        """The rows of the file, in order (``[]`` when it does not exist).

        ``repair``: this process owns the file: a cut-off last line is removed (a WARNING names
        it), a whole last row missing only its newline gets it, and with ``damaged="skip"`` the
        skipped lines are removed too (the file is rewritten atomically). ``tolerate_torn``: a
        cut-off last line is left out without an error (another process owns the file).
        Otherwise a cut-off last line is reported like any damaged line."""
        if not self.path.exists():
            return []
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise self.error(f"cannot read {str(self.path)!r}: {exc.strerror or exc}") from None
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        rows: list[dict[str, Any]] = []
        problems: list[str] = []
        seen: dict[Hashable, int] = {}

        def add(number: int, row: dict[str, Any]) -> None:
            if self.key is not None:
                k = self.key(row)
                if k in seen:
                    problems.append(f"line {number}: repeats the row of line {seen[k]} ({k})")
                    return
                seen[k] = number
            rows.append(row)

        for number, raw in enumerate(lines, start=1):
            row, problem = _parse(raw, self.path, number, self.check)
            if problem:
                problems.append(f"line {number}: {problem}")
            elif row is not None:
                add(number, row)
        cut = False
        if torn:
            number = len(lines) + 1
            row, problem = _parse(torn, self.path, number, self.check)
            if problem is None and row is not None:
                add(number, row)
                if repair:
                    self._finish_last_line()
            elif problem is not None and (repair or tolerate_torn):
                cut = repair
                (logger.warning if repair else logger.info)(
                    "%s, line %d: %s a row cut off by an interrupted write (%s); it runs again", self.path, number,
                    "removing" if repair else "leaving out", problem)
            elif problem is not None:
                problems.append(f"line {number}: {problem} (cut off: no newline)")
        if problems and self.damaged == "error":
            raise self.error(f"{str(self.path)!r} has {len(problems)} damaged or foreign line(s): "
                             f"{shown_problems(problems)}. {self.advice}")
        if problems:
            logger.warning("%s: leaving out %d damaged line(s): %s", self.path, len(problems),
                           shown_problems(problems))
        if repair and problems:
            self.rewrite(rows)
        elif cut:
            self._truncate(len(data) - len(torn))
        return rows

    def keys(self, **read: Any) -> set[Hashable]:
        """The keys of the rows on disk (``read`` as :meth:`read`'s)."""
        if self.key is None:
            raise AttnlensError(f"{self!r} has no key")
        return {self.key(row) for row in self.read(**read)}

    # ------------------------------------------------------------------ writing
    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows as whole lines in one write, then fsync."""
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _append_lock(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)

    def rewrite(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the file by ``rows``, atomically (a reader sees the old file or the new one)."""
        write_atomic(self.path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                     error=self.error)

    def _finish_last_line(self) -> None:
        with _append_lock(self.path), self.path.open("ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())

    def _truncate(self, size: int) -> None:
        with _append_lock(self.path), self.path.open("r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())


# ----------------------------------------------------------------------------- whole files


def write_atomic(path: str | os.PathLike, text: str, *, error: type[AttnlensError] = AttnlensError) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half of it."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise error(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


class RunRecord:
    """A JSON object file that records what made a run's rows (settings, model, data).

    ``kind`` names the file and ``what`` the rows in messages; ``advice`` ends the message of a damaged
    record."""

    def __init__(self, path: str | os.PathLike, *, error: type[AttnlensError] = AttnlensError,
                 what: str = "the rows", advice: str = "restore it, or start afresh", kind: str = "run file") -> None:
        self.path = Path(path)
        self.error, self.what, self.advice, self.kind = error, what, advice, kind

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> dict[str, Any] | None:
        """The record (None when there is none); a damaged one is an error naming it, left as it is."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.error(f"cannot read {str(self.path)!r}: {exc.strerror or exc}") from None
        try:
            record = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise self.error(f"{str(self.path)!r} is damaged ({exc}); it records what made {self.what}: "
                             f"{self.advice}") from None
        if not isinstance(record, dict):
            raise self.error(f"{str(self.path)!r} is not a {self.kind} (a JSON {type(record).__name__}); "
                             f"{self.advice}")
        return record

    def write(self, record: Mapping[str, Any], **dumps: Any) -> None:
        """Replace the record, atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(dict(record), **{"indent": 1, **dumps}), error=self.error)


def changed(before: Mapping[str, Any], now: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """The keys (``keys``, default: those of either mapping, sorted) whose values differ."""
    names = list(keys) if keys is not None else sorted(set(before) | set(now))
    return [k for k in names if before.get(k) != now.get(k)]


@contextmanager
def exclusive(folder: str | os.PathLike, *, lock_file: str = ".attnlens.lock",
              error: type[AttnlensError] = AttnlensError) -> Iterator[None]:
    """Hold ``folder``'s lock for a run: a second run on the same folder fails at once instead of doubling rows."""
    lock = FileLock(str(Path(folder) / lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise error(
            f"another run is writing to {str(folder)!r} (its lock {lock_file} is held); "
            "wait for it to finish or choose another output directory"
        ) from None
    try:
        yield
    finally:
        lock.release()


# ----------------------------------------------------------------------------- shards


class Shards(Protocol):
    """The workers of a sweep, as :class:`ShardedRows` needs them."""

    rank: int
    world_size: int

    @property
    def distributed(self) -> bool: ...

    @property
    def is_main(self) -> bool: ...

    def barrier(self) -> None: ...


class OneProcess:
    """The workers of a run in one process."""

    rank, world_size, distributed, is_main = 0, 1, False, True

    def barrier(self) -> None:
        pass


class ShardedRows:
    """One sweep's rows: the merged file, and one part file per worker while the sweep runs.

    ``merged`` is the result (e.g. ``out/rows.jsonl``); parts live in ``merged.parent / "parts"``
    as ``{stem}.rank{r}.jsonl``. In one process the rows go straight into the merged file.
    ``rows`` are the :class:`RowFile` settings of every file (default: damaged lines skipped,
    as a sweep computes again what they held)."""

    def __init__(self, merged: str | os.PathLike, workers: Shards | None = None, **rows: Any) -> None:
        self.merged = Path(merged)
        self.workers: Any = workers if workers is not None else OneProcess()
        self.parts = self.merged.parent / PARTS_DIR
        self.rows = {"damaged": "skip", **rows}

    @property
    def stem(self) -> str:
        return self.merged.name.rsplit(".", 1)[0]

    @property
    def own(self) -> Path:
        """Where this worker appends its rows."""
        if not self.workers.distributed:
            return self.merged
        return self.parts / f"{self.stem}.rank{self.workers.rank}.jsonl"

    def file(self, path: Path) -> RowFile:
        return RowFile(path, **self.rows)

    def part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        return sorted(self.parts.glob(f"{self.stem}.rank*.jsonl"))

    def read_all(self) -> list[dict[str, Any]]:
        """Every row on disk: the merged file's, then each part's (read only; a cut-off last line left out)."""
        rows: list[dict[str, Any]] = []
        for path in [self.merged, *self.part_files()]:
            rows.extend(self.file(path).read(tolerate_torn=True))
        return rows

    @contextmanager
    def writer(self) -> Iterator[Callable[[Sequence[Mapping[str, Any]]], None]]:
        """``write(rows)`` appends to this worker's file and fsyncs (its damaged last line is removed first)."""
        sink = self.file(self.own)
        sink.read(repair=True)
        yield sink.append

    def merge(self, key: Key, order: Callable[[dict[str, Any]], Any],
              fix: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None) -> list[dict[str, Any]]:
        """Merge every worker's rows into the merged file (rank 0 writes); every worker returns them.

        Rows with the same ``key`` are one row (the first found is kept); ``fix``, when given, maps
        each row to the row to write, or None to leave it out (a stale row); the file is sorted by
        ``order``. Call it on every worker once they have all written."""
        self.workers.barrier()
        if self.workers.is_main:
            seen: set[Any] = set()
            rows = []
            for row in self.read_all():
                k = key(row)
                if k not in seen:
                    seen.add(k)
                    fixed = row if fix is None else fix(row)
                    if fixed is not None:
                        rows.append(fixed)
            rows.sort(key=order)
            self.merged.parent.mkdir(parents=True, exist_ok=True)
            self.file(self.merged).rewrite(rows)
            for part in self.part_files():
                part.unlink()
            if self.parts.is_dir() and not any(self.parts.iterdir()):
                self.parts.rmdir()
            logger.info("merged %d rows into %s", len(rows), self.merged)
        self.workers.barrier()
        return self.file(self.merged).read(tolerate_torn=True)


__all__ = ["OneProcess", "RowFile", "RunRecord", "ShardedRows", "Shards", "changed", "exclusive", "is_object",
           "shown_problems", "write_atomic"]
