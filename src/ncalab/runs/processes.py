"""The kernel's parent-death signal, for the processes a run starts (standard library only: cheap to import)."""

from __future__ import annotations

import ctypes
import sys

_PR_SET_PDEATHSIG = 1  # prctl(2)

# Set by ``train.py`` to its own pid when it starts: a sweep launcher's worker processes (joblib's) inherit it, and
# a run in a process whose parent has this pid ends when that parent dies (ncalab.train.run).
LAUNCHER_PID_ENV = "NCALAB_LAUNCHER_PID"


def parent_death_signal(signum: int) -> bool:
    """Linux: the kernel sends ``signum`` to this process when the thread that started it ends."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
