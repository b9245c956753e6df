"""The peak memory of a run's training: the process's peak resident set on CPU (Linux), torch's peak allocation
on CUDA, counted from :func:`reset_peak` (the start of training) so that a process that ran something before (a
sweep's worker reused for its next job) reports this run alone."""

from __future__ import annotations

from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def _rss_peak_kb() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak(device: torch.device | str) -> bool:
    """Start counting the peak from now; False where this system cannot (the peak then stays unknown)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")  # Linux: resets the peak resident set (VmHWM) to the current one
    except OSError:
        return False
    return _rss_peak_kb() is not None


def peak_gb(device: torch.device | str) -> float | None:
    """The peak since :func:`reset_peak` (or since the process started), in GiB: CUDA, torch's allocations; CPU,
    the whole process's resident set (Python and torch included); ``None`` where this system does not say."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kb = _rss_peak_kb()
    return kb / 2**20 if kb is not None else None
