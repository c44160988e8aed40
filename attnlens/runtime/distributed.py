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
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..core.errors import SweepError
from ..core.resumable import PARTS_DIR, ShardedRows

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: how long a worker waits at a barrier for the slowest one (``$ATTNLENS_DIST_TIMEOUT`` seconds)
DEFAULT_TIMEOUT_S = 6 * 3600


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
# (the rows on disk, their parts and their merge: attnlens.core.resumable)


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


__all__ = ["PARTS_DIR", "ShardedRows", "Workers", "current_workers", "run_sweep", "sweep_device", "worker_group"]
