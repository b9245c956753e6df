"""Errors that carry a message meant for the user: what is wrong, where, and what would be accepted."""


class NCALabError(Exception):
    """Base class; ``train.py`` prints these as one line instead of a traceback."""


class ConfigError(NCALabError, ValueError):
    """A config value of the wrong type or out of range."""


class TargetError(NCALabError, ValueError):
    """A target image that is missing, unreadable or unusable."""


class CheckpointError(NCALabError, ValueError):
    """A checkpoint that cannot be read or does not match the run."""
