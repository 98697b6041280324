"""Peak memory of a block of work: CUDA max allocated on GPU, the process's peak resident set on CPU."""

from __future__ import annotations

import contextlib
import ctypes
import gc
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc malloc_trim), where the C library has it."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """`with PeakMemory(device) as peak: ...` then `peak.mb`: memory the block needed above what was in use before.

    On CUDA: torch.cuda.max_memory_allocated minus the allocation at entry. On CPU (Linux): the process's peak
    resident set (VmHWM, reset at entry through /proc/self/clear_refs) minus the resident set at entry, after freed
    heap memory was handed back to the OS (malloc_trim) so the block's allocations show; None where /proc does not
    allow it.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.mb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_memory()  # so memory freed by earlier work is not silently reused below the baseline
            with contextlib.suppress(OSError):
                _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
            self._base = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            peak = _status_kb("VmHWM")
            self.mb = None if peak is None or self._base is None else max(0, peak - self._base) / 1024
        return False
