"""Process-wide CPU runtime settings: glibc's allocator thresholds (issue 16).

A CPU forward or training step allocates its activations as a few large blocks (a
ResNet-29 evaluation batch of 64 at 150 px: 184 MB per feature map). glibc serves
blocks above ``M_MMAP_THRESHOLD`` (at most 32 MB with its dynamic rule) with a fresh
``mmap`` and gives them back with ``munmap`` when the tensor dies, so every batch
page-faults its activations in again, zero-filled by the kernel: on this project's
2-core machine about a third of an evaluation's CPU time was system time. Raising the
mmap threshold and the heap's trim threshold keeps freed blocks in the heap for the next
batch; the scores are unchanged (same arithmetic, other addresses), the process keeps
its peak memory instead of returning it between batches. This is the setting PyTorch's
CPU performance guides reach with ``MALLOC_MMAP_THRESHOLD_`` / jemalloc / tcmalloc;
measured in docs/performance.md ("Evaluation throughput").

``RANFACE_ALLOCATOR`` chooses: ``tuned`` (default) or ``system`` (leave glibc as it is).
Nothing is changed when the user already tuned glibc (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES`` set), preloaded another allocator
(``LD_PRELOAD``), or the C library is not glibc. Called once by the ``ranface`` CLI; a
Python caller may call :func:`tune_allocator` itself.
"""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Mapping, Optional

__all__ = ["tune_allocator", "allocator_state", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "ENV_VAR"]

ENV_VAR = "RANFACE_ALLOCATOR"
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks below 1 GiB come from the heap (reused across batches)
TRIM_THRESHOLD = 2 << 30  # the heap keeps up to 2 GiB of free memory at its top

_state: Optional[str] = None  # what tune_allocator did in this process


def _decide(env: Mapping[str, str], libc: str) -> str:
    """'tune', or why not ('system: ...')."""
    choice = env.get(ENV_VAR, "tuned").strip().lower() or "tuned"
    if choice not in ("tuned", "system"):
        from .errors import ConfigError

        raise ConfigError(f"{ENV_VAR} must be 'tuned' or 'system', got {env.get(ENV_VAR)!r}")
    if choice == "system":
        return f"system: {ENV_VAR}=system"
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        if var in env:
            return f"system: {var} is set"
    if any(k in env.get("LD_PRELOAD", "") for k in ("jemalloc", "tcmalloc", "mimalloc")):
        return "system: another allocator is preloaded"
    if libc != "glibc":
        return f"system: C library {libc or 'unknown'} is not glibc"
    return "tune"


def tune_allocator(env: Optional[Mapping[str, str]] = None) -> str:
    """Apply the thresholds above once per process (see the module docstring); returns
    what was done: ``tuned``, or ``system: <reason>``. Raises ConfigError for a bad
    ``RANFACE_ALLOCATOR``."""
    global _state
    if _state is not None:
        return _state
    decision = _decide(os.environ if env is None else env, platform.libc_ver()[0])
    if decision == "tune":
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and \
                libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        except (OSError, AttributeError):
            ok = False
        decision = "tuned" if ok else "system: mallopt refused"
    _state = decision
    return decision


def allocator_state() -> str:
    """What :func:`tune_allocator` did in this process (``system: not tuned`` before it ran)."""
    return _state or "system: not tuned"
