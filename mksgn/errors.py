"""The one exception family of the ``mksgn`` package.

Every error a user can cause (bad file, bad option, wrong checkpoint) is raised as a
subclass of :class:`MksgnError`. The command-line tools catch this family and print the
message without a traceback (exit status 2). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

from pathlib import Path


class MksgnError(Exception):
    """Base class: a problem the user can fix. The message says what, where and what to do."""


class DataError(MksgnError):
    """A skeleton file, folder or split is malformed or missing.

    Parameters
    ----------
    message : str
        What was wrong and what was expected.
    path : str or Path, optional
        The file or folder concerned; put at the front of the message.
    line : int, optional
        1-based line number for text formats (NTU ``.skeleton``).
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else Path(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f":{line}"
            where += ": "
        super().__init__(where + message)


class ConfigError(MksgnError):
    """A model or training configuration is invalid (unknown key, bad value)."""


class CheckpointError(MksgnError):
    """A checkpoint is missing, corrupt, of the wrong kind or of an unsupported version."""


class OptionError(MksgnError):
    """A command-line option or output path is invalid (not finite, out of range, not writable)."""
