"""Peak memory of this process: Linux's /proc on a CPU, torch's allocator on CUDA (each case in a fresh process)."""

from __future__ import annotations

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
