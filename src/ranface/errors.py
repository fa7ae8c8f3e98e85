"""Error types that ranface lets escape to users.

Every error carries one line that names the offending file (and offset, line or key
where there is one) and says what is wrong. The CLI prints ``str(err)`` and exits 2.
"""
from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class RanfaceError(Exception):
    """Base class of all errors ranface raises on bad input or bad state."""


class ConfigError(RanfaceError):
    """An invalid configuration: unknown key, wrong type, bad value."""


class DataError(RanfaceError):
    """A data file is missing, malformed, truncated or has the wrong content.

    ``where`` is an optional location inside the file: a byte offset, line number,
    record index or key, formatted after the path.
    """

    def __init__(self, path: Optional[PathLike], problem: Optional[str] = None, where: Optional[str] = None):
        if problem is None:
            # Rebuilt from one string: a DataLoader worker re-raises an exception as
            # ``type(message-with-traceback)``. Keep only the original one-line message.
            self.path, self.where = None, None
            self.problem = _last_error_line(os.fspath(path) if path is not None else "")
            super().__init__(self.problem)
            return
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.where = where
        loc = self.path or "<input>"
        if where:
            loc = f"{loc} ({where})"
        super().__init__(f"{loc}: {problem}")


def _last_error_line(text: str) -> str:
    """'...Traceback...\nranface.errors.DataError: x.jpg: corrupt' -> 'x.jpg: corrupt'."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return text
    last = lines[-1]
    for prefix in ("ranface.errors.",):
        if last.startswith(prefix) and ": " in last:
            return last.split(": ", 1)[1]
    return last


class UnsafePickleError(DataError):
    """A pickle tried to load something outside the allowed types; nothing was executed."""


class CheckpointError(DataError):
    """A checkpoint is unreadable or does not fit the model it is loaded into."""


class ProtocolError(DataError):
    """An evaluation protocol's files are missing or malformed."""


class NonFiniteError(RanfaceError):
    """Training produced too many non-finite losses or gradients in a row."""


class DistributedError(RanfaceError):
    """A peer process failed or a collective timed out."""
