"""Atomic file output: write to a temporary file in the same directory, fsync, rename.

A reader (or a rerun after a crash) therefore sees either the old file or the complete
new one, never a half-written file that looks complete.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from typing import IO, Any, Callable, Iterator, Optional

from .errors import DataError


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Context manager yielding a temp file that replaces ``path`` on success only."""
    if mode not in ("wb", "w"):
        raise ValueError("atomic_open supports modes 'wb' and 'w'")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                   dir=directory)
    except OSError as exc:
        raise DataError(path, f"cannot write output ({exc.strerror or exc})") from None
    try:
        # mkstemp creates 0600; give the output the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise DataError(path, f"cannot write output ({exc.strerror or exc})") from None
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_save(path: str, writer: Callable[[IO], None]) -> None:
    """Call ``writer(fh)`` on a binary temp file, then move it into place."""
    with atomic_open(path, "wb") as fh:
        writer(fh)


# Temp names of atomic_open (".<name>.<random>.tmp") and of the RecordIO / .bin writers
# (".<name>.<random>.part"): what a process killed mid-write leaves behind.
_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]+\.(tmp|part)$")


def remove_stale_temps(directory: str, recursive: bool = False) -> int:
    """Delete temp files that killed writers left in ``directory``; returns how many.

    Call it only where no other process is writing into ``directory`` (a run's own
    output folder, at the start of a run or resume): a live writer's temp looks the same.
    """
    removed = 0
    if not os.path.isdir(directory):
        return 0
    for dirpath, dirnames, files in os.walk(directory):
        for f in files:
            if _TEMP_RE.match(f):
                try:
                    os.unlink(os.path.join(dirpath, f))
                    removed += 1
                except OSError:
                    pass
        if not recursive:
            break
    return removed


def check_writable_dir(directory: str) -> None:
    """Fail early (before any work) when ``directory`` cannot be created or written."""
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=directory)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise DataError(directory, f"output directory is not writable ({exc.strerror or exc})") from None


def progress_bar(total: Optional[int], desc: str, enabled: bool, unit: str = "img") -> Any:
    """The one progress bar of long commands: tqdm on stderr, only when ``enabled`` and
    stderr is a terminal (never in logs or pipes); else None."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def text_table(header: "list[str]", rows: "list[list[str]]") -> str:
    """A plain, column-aligned text table for a terminal (header, rule, rows)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
