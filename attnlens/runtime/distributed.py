"""Data-parallel sweeps on torch.distributed: which worker this is, its shard, its device, its results file.

A sweep (an experiment, a head profile, head descriptions, a batch of pipeline
prompts) is a list of *units* that every worker computes in the same order.
Worker ``rank`` of ``world_size`` takes the pending units ``rank, rank +
world_size, ...`` and appends their rows to its own JSON Lines file; once
every worker is done, rank 0 merges the files into one, ordered by unit, and
removes the parts. A unit whose rows are on disk (merged or in any worker's
part) is done: rerunning the same command after an interruption, with any
number of workers, runs only what is missing.

The workers are whatever launched them: ``torchrun`` (or ``accelerate
launch``, or ``srun`` running ``torchrun``) sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without them the sweep
runs in one process (world size 1). The only collective used is a barrier
(plus one all-gather to agree on a flag), through ``torch.distributed`` with
the gloo backend on CPU and nccl on GPUs. The workers share a file system:
the output directory must be visible to all of them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..core.errors import SweepError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: how long a worker waits at a barrier for the slowest one (``$ATTNLENS_DIST_TIMEOUT`` seconds)
DEFAULT_TIMEOUT_S = 6 * 3600

PARTS_DIR = "parts"


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SweepError(f"${name} must be an integer, got {value!r}") from None


@dataclass(frozen=True)
class Workers:
    """This process' place in the sweep: ``rank`` of ``world_size`` workers, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device(self) -> torch.device:
        """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank % max(1, torch.cuda.device_count()))
        return torch.device("cpu")

    def mine(self, items: Sequence[T]) -> list[T]:
        """This worker's shard of ``items``: every ``world_size``-th one, starting at ``rank``."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def all_agree(self, flag: bool) -> bool:
        """True when ``flag`` is true on every worker (so every worker takes the same branch)."""
        if not self.distributed:
            return bool(flag)
        import torch.distributed as dist

        flags: list[Any] = [None] * self.world_size
        dist.all_gather_object(flags, bool(flag))
        return all(flags)


def current_workers() -> Workers:
    """The workers as the process group, or else the launcher's environment, describes them."""
    import torch.distributed as dist

    local = _env_int("LOCAL_RANK", 0) or 0
    if dist.is_available() and dist.is_initialized():
        return Workers(dist.get_rank(), dist.get_world_size(), local)
    world = _env_int("WORLD_SIZE", 1) or 1
    rank = _env_int("RANK", 0) or 0
    if world < 1 or not 0 <= rank < world:
        raise SweepError(f"$RANK={rank} and $WORLD_SIZE={world} do not describe a worker (0 <= RANK < WORLD_SIZE)")
    return Workers(rank, world, local)


def sweep_device() -> torch.device | None:
    """The device this worker should load its model on: ``cuda:LOCAL_RANK`` with CUDA, else None (the CPU)."""
    return current_workers().device if torch.cuda.is_available() else None


@contextmanager
def worker_group(backend: str | None = None) -> Iterator[Workers]:
    """The sweep's workers for the ``with`` block, joining the process group when launched as several.

    With ``WORLD_SIZE`` > 1 and no process group yet, one is created (``env://``
    rendezvous, gloo on CPU, nccl with CUDA) and kept for the rest of the process
    (the next sweep in the same process reuses it; it is destroyed at exit), since a
    group cannot be re-created reliably on the same rendezvous. A group created by
    the caller (or by ``accelerate``) is used as it is.
    """
    workers = current_workers()
    if workers.distributed:
        _join(workers, backend)
    yield workers


def _join(workers: Workers, backend: str | None) -> None:
    import atexit

    import torch.distributed as dist

    if not dist.is_available():
        raise SweepError("this torch build has no torch.distributed; run the sweep in one process")
    if dist.is_initialized():
        return
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise SweepError(f"$WORLD_SIZE={workers.world_size} but ${name} is not set: launch with torchrun")
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    timeout = datetime.timedelta(seconds=_env_int("ATTNLENS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S) or DEFAULT_TIMEOUT_S)
    if chosen == "nccl":
        torch.cuda.set_device(workers.device)
    dist.init_process_group(chosen, rank=workers.rank, world_size=workers.world_size, timeout=timeout)
    atexit.register(_leave)
    logger.info("worker %d of %d joined the process group (%s)", workers.rank, workers.world_size, chosen)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- results on disk


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSON Lines file and the number of damaged lines (an interrupted write)."""
    if not path.exists():
        return [], 0
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
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad


def _write_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


class ShardedRows:
    """One sweep's rows: the merged file, and one part file per worker while the sweep runs.

    ``merged`` is the result (e.g. ``out/rows.jsonl``); parts live in
    ``merged.parent / "parts"`` as ``{stem}.rank{r}.jsonl``. In one process the
    rows go straight into the merged file.
    """

    def __init__(self, merged: str | os.PathLike, workers: Workers) -> None:
        self.merged = Path(merged)
        self.workers = workers
        self.parts = self.merged.parent / PARTS_DIR

    @property
    def stem(self) -> str:
        return self.merged.name.rsplit(".", 1)[0]

    @property
    def own(self) -> Path:
        """Where this worker appends its rows."""
        if not self.workers.distributed:
            return self.merged
        return self.parts / f"{self.stem}.rank{self.workers.rank}.jsonl"

    def part_files(self) -> list[Path]:
        if not self.parts.is_dir():
            return []
        return sorted(self.parts.glob(f"{self.stem}.rank*.jsonl"))

    def read_all(self) -> list[dict[str, Any]]:
        """Every row on disk: the merged file's, then each part's (read only; damaged lines skipped)."""
        rows: list[dict[str, Any]] = []
        for path in [self.merged, *self.part_files()]:
            found, _ = _read_lines(path)
            rows.extend(found)
        return rows

    @contextmanager
    def writer(self) -> Iterator[Callable[[Sequence[dict[str, Any]]], None]]:
        """``write(rows)`` appends to this worker's file and flushes (a damaged last line is dropped first)."""
        path = self.own
        path.parent.mkdir(parents=True, exist_ok=True)
        rows, bad = _read_lines(path)
        if bad:
            logger.warning("dropping %d damaged line(s) from %s", bad, path)
            _write_atomic(path, rows)
        with path.open("a", encoding="utf-8") as sink:

            def write(batch: Sequence[dict[str, Any]]) -> None:
                for row in batch:
                    sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
                os.fsync(sink.fileno())

            yield write

    def merge(self, key: Callable[[dict[str, Any]], Any],
              order: Callable[[dict[str, Any]], Any],
              fix: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None) -> list[dict[str, Any]]:
        """Merge every worker's rows into the merged file (rank 0 writes); every worker returns them.

        Rows with the same ``key`` are one row (the first found is kept); ``fix``, when
        given, maps each row to the row to write, or None to leave it out (a stale row);
        the file is sorted by ``order``. Call it on every worker once they have all written.
        """
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
            _write_atomic(self.merged, rows)
            for part in self.part_files():
                part.unlink()
            if self.parts.is_dir() and not any(self.parts.iterdir()):
                self.parts.rmdir()
            logger.info("merged %d rows into %s", len(rows), self.merged)
        self.workers.barrier()
        return _read_lines(self.merged)[0]


def run_sweep(
    units: Sequence[T],
    unit_key: Callable[[T], str],
    compute: Callable[[T], list[dict[str, Any]]],
    merged: str | os.PathLike,
    *,
    workers: Workers,
    progress: Callable[[int], Any] | None = None,
) -> list[dict[str, Any]]:
    """Compute every unit not yet on disk, sharded over ``workers``; return all rows, in unit order.

    Every row of unit ``u`` carries ``"unit": unit_key(u)``; rows are ordered by
    the units' order, then by their position within the unit.
    """
    store = ShardedRows(merged, workers)
    done = {row.get("unit") for row in store.read_all()}
    workers.barrier()  # every worker has read the same state before any writes
    pending = [u for u in units if unit_key(u) not in done]
    mine = workers.mine(pending)
    logger.info("worker %d/%d: %d of %d pending units (%d done)", workers.rank, workers.world_size, len(mine),
                len(pending), len(units) - len(pending))
    with store.writer() as write:
        for unit in mine:
            k = unit_key(unit)
            rows = [{"unit": k, "part": i, **row} for i, row in enumerate(compute(unit))]
            if not rows:
                raise SweepError(f"unit {k!r} gave no rows")
            write(rows)
            if progress is not None:
                progress(1)
    index = {unit_key(u): i for i, u in enumerate(units)}
    return store.merge(
        key=lambda r: (r.get("unit"), r.get("part")),
        order=lambda r: (index.get(r.get("unit"), len(index)), r.get("part", 0)),
    )


__all__ = ["ShardedRows", "Workers", "current_workers", "run_sweep", "sweep_device", "worker_group"]
