"""Errors that carry a message meant for the user: what is wrong, where, and what would be accepted."""

import stat
from pathlib import Path

from hydra.errors import CompactHydraException


class NCALabError(Exception):
    """Base class; ``train.py`` prints these as one line instead of a traceback."""


class ConfigError(NCALabError, ValueError):
    """A config value of the wrong type or out of range."""


class TargetError(NCALabError, ValueError):
    """A target image that is missing, unreadable or unusable."""


class CheckpointError(NCALabError, ValueError):
    """A checkpoint that cannot be read or does not match the run."""


class RunError(NCALabError):
    """The run could not go on: a full disk, a folder it may not write. What was saved stays."""


class SweepJobFailed(NCALabError, CompactHydraException):
    """A sweep job's one-line error, raised again for Hydra after the sweep has run its other jobs: Hydra prints
    a ``CompactHydraException`` as its message alone (with the job's overrides), not as a traceback."""


def kind_of(path: Path) -> str:
    """What ``path`` is, in words (for a message about a path of the wrong kind)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "not reachable"
    if stat.S_ISDIR(mode):
        return "a directory"
    for test, words in (
        (stat.S_ISREG, "a file"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return words
    return "not a regular file"
