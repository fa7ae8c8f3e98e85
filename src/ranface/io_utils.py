"""Atomic file output: write to a temporary file in the same directory, fsync, rename.

A reader (or a rerun after a crash) therefore sees either the old file or the complete
new one, never a half-written file that looks complete.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

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


def make_temp(path: str, suffix: str = ".tmp") -> "tuple[int, str]":
    """A temp file beside ``path`` (``.<name>.<random><suffix>``) with the permissions a
    plain ``open()`` would give (mkstemp's are 0600). Returns (fd, temp path); raises
    OSError."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)  # created when the first output is written
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def _output_temp(path: str) -> Tuple[int, str]:
    """(fd, name) of a fresh temp beside ``path`` (its folder created); one-line DataError."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return make_temp(path)
    except OSError as exc:
        raise DataError(path, f"cannot write output ({exc.strerror or exc})") from None


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Context manager yielding a temp file that replaces ``path`` on success only."""
    if mode not in ("wb", "w"):
        raise ValueError("atomic_open supports modes 'wb' and 'w'")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _output_temp(path)
    try:
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


def publish_together(outputs: Mapping[str, Callable[[IO], None]]) -> None:
    """Write several files that belong together (``path -> writer(binary fh)``) so that
    readers see all the new ones or all the old ones: every file is first written and
    fsynced to a temp, then moved into place; a failure while moving restores the files
    already moved (from hard-link backups), so no mix of old and new is left.

    (A crash of the process *between* the renames can still leave a mix; the window is
    a few renames long.)
    """
    staged: List[Tuple[str, str]] = []
    paths = [os.fspath(p) for p in outputs]
    for path in paths:
        if os.path.lexists(path) and not os.path.isfile(path):
            raise DataError(path, "cannot write output (exists and is not a regular file)")
    try:
        for path, writer in zip(paths, outputs.values()):
            fd, tmp = _output_temp(path)
            staged.append((tmp, path))
            try:
                with os.fdopen(fd, "wb") as fh:
                    writer(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise DataError(path, f"cannot write output ({exc.strerror or exc})") from None
        _replace_all(staged)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _replace_all(staged: List[Tuple[str, str]]) -> None:
    backups: Dict[str, Optional[str]] = {}
    done: List[str] = []
    try:
        for tmp, path in staged:
            backup = None
            if os.path.lexists(path):
                backup = os.path.join(os.path.dirname(os.path.abspath(path)),
                                      f".{os.path.basename(path)}.{os.urandom(4).hex()}.tmp")
                try:
                    os.link(path, backup)
                except OSError:
                    shutil.copy2(path, backup)
            backups[path] = backup
            os.replace(tmp, path)
            done.append(path)
    except OSError as exc:
        for path in reversed(done):  # roll back to the old set
            with contextlib.suppress(OSError):
                if backups.get(path):
                    os.replace(backups.pop(path), path)
                else:
                    os.unlink(path)
        failed = staged[len(done)][1] if len(done) < len(staged) else staged[-1][1]
        raise DataError(failed, f"cannot write output ({exc.strerror or exc}); none of "
                        f"{', '.join(os.path.basename(p) for _, p in staged)} was changed") from None
    finally:
        for b in backups.values():
            if b:
                with contextlib.suppress(OSError):
                    os.unlink(b)
    for directory in {os.path.dirname(os.path.abspath(p)) for _, p in staged}:
        _fsync_dir(directory)


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
    """Fail early (before any work) when ``directory`` cannot be created or written.

    Nothing is left behind: a folder that does not exist yet is not created (its nearest
    existing parent is tested instead), so a command that fails later on bad input
    leaves no empty output folder.
    """
    probe = os.path.abspath(directory)
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise DataError(directory, f"output directory is not writable ({probe} is not a folder)")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=probe)
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


def check_output_file(path: str) -> None:
    """Fail early (before any work) when the file ``path`` cannot be written: its folder
    is not writable, or ``path`` is a folder or another non-regular file."""
    if os.path.lexists(path) and not os.path.isfile(path):
        raise DataError(path, "cannot write output (exists and is not a regular file)")
    check_writable_dir(os.path.dirname(os.path.abspath(path)))
