"""Peak memory of this process: Linux's /proc on a CPU, torch's allocator on CUDA (each case in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``, ``VmHWM``), or None where there is none."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset the peak resident set (``VmHWM``) to the current one; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _cuda(device: Any) -> bool:
    import torch

    return torch.device(device).type == "cuda"


def reset_device_peak(device: Any) -> bool:
    """Reset the peak to what is in use now: ``torch.cuda`` on CUDA, else :func:`reset_peak`."""
    if _cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_peak()


def in_use_mib(device: Any) -> float | None:
    """Memory in use now in MiB: ``torch.cuda.memory_allocated`` on CUDA, else the resident set (``VmRSS``)."""
    if _cuda(device):
        import torch

        return torch.cuda.memory_allocated(device) / 2**20
    kib = status_kib("VmRSS")
    return None if kib is None else kib / 1024


def peak_mib(device: Any) -> float | None:
    """The peak since :func:`reset_device_peak` in MiB: ``torch.cuda.max_memory_allocated`` on CUDA, else ``VmHWM``."""
    if _cuda(device):
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = status_kib("VmHWM")
    return None if kib is None else kib / 1024


def peak_method(device: Any, exact: bool) -> str:
    """How :func:`peak_mib` measured, for a benchmark's header."""
    if _cuda(device):
        return "max_memory_allocated"
    return "VmHWM" if exact else "VmHWM since start"


def measure_in_worker(script: str, mode: str, length: int, threads: int, flags: list[str]) -> dict:
    """Run ``script --worker MODE LENGTH`` in a fresh process and return the JSON of its last line.

    glibc returns freed blocks of 64 KiB or more at once (``MALLOC_MMAP_THRESHOLD_``, no trimming
    delay), so the resident set follows live memory; ``threads`` sets the worker's thread pools.
    """
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1",
               MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", OMP_NUM_THREADS=str(threads))
    command = [sys.executable, script, "--worker", mode, str(length), "--threads", str(threads), *flags]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} at {length} tokens failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
