"""The kernel's parent-death signal, for the processes a run starts (standard library only: cheap to import)."""

from __future__ import annotations

import ctypes
import sys

_PR_SET_PDEATHSIG = 1  # prctl(2)


def parent_death_signal(signum: int) -> bool:
    """Linux: the kernel sends ``signum`` to this process when the thread that started it ends."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
