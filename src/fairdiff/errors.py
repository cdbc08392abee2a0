"""Errors that describe a user mistake.

Anything raised as a :class:`FairdiffError` is printed by the CLI as one line and exits with code 2;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FairdiffError(Exception):
    """A user mistake (bad config, bad data, bad path): shown as one line, exit code 2."""


class ConfigError(FairdiffError):
    """A config key, value or override is wrong."""


class DataError(FairdiffError):
    """Data is missing, empty, corrupt or cannot build the requested split."""


class RunDirError(FairdiffError):
    """An output folder holds something that would be overwritten or is not a run."""
