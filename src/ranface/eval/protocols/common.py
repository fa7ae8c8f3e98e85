"""Shared reading helpers of the protocols: required-file checks (all missing files in
one error), whitespace tables with a fixed column count, MATLAB ``.mat`` lists, cosine
scores of index pairs in blocks."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import ProtocolError

_MAX_LISTED = 12


def listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" ... and {len(items) - limit} more" if len(items) > limit else "")


def require(root: str, entries: Iterable[Tuple[str, str]], what: str) -> None:
    """Raise one :class:`ProtocolError` naming every missing entry.

    ``entries`` are (path relative to ``root`` or absolute, 'file' | 'dir').
    """
    missing = []
    for rel, kind in entries:
        p = rel if os.path.isabs(rel) else os.path.join(root, rel)
        ok = os.path.isdir(p) if kind == "dir" else os.path.isfile(p)
        if not ok:
            missing.append(rel + ("/" if kind == "dir" else ""))
    if missing:
        raise ProtocolError(root, f"not a {what} root: missing {len(missing)} of its files: "
                            f"{listing(missing, 50)}")


def escapes_folder(name: str) -> bool:
    """Whether a listed image name leaves the folder it is relative to: absolute, or a
    ``..`` that climbs above it (checked on the text; symlinks are the dataset's own)."""
    norm = os.path.normpath(name.replace("\\", "/"))
    return os.path.isabs(name) or norm == ".." or norm.startswith("../") or name.startswith("~")


def check_listed(names: Sequence[str], list_file: str, folder: str, allow_outside: bool,
                 where: Optional[Sequence[str]] = None) -> None:
    """Refuse a protocol list (pairs.txt, IJB-C meta, TinyFace .mat) that names an image
    outside ``folder`` -- absolute or ``../`` -- unless the run opted in
    (``EvalContext.allow_outside_root``, ``ranface evaluate --allow-outside-root``).
    ``where[i]`` locates entry i in ``list_file`` (a line number, an array index)."""
    if allow_outside:
        return
    for i, name in enumerate(names):
        if escapes_folder(name):
            raise ProtocolError(list_file, f"names {name[:80]!r}, outside {folder} (absolute or "
                                "'..'); refused (--allow-outside-root to read it)",
                                where[i] if where is not None else f"entry {i}")


def first_existing(root: str, candidates: Sequence[str]) -> Optional[str]:
    """The first of ``candidates`` (relative to ``root``) that exists, else None."""
    for rel in candidates:
        if os.path.exists(os.path.join(root, rel)):
            return rel
    return None


def read_columns(path: str, n_cols: int, layout: str) -> Iterator[Tuple[int, List[str]]]:
    """Yield (line number, tokens) of each non-blank line, exactly ``n_cols`` tokens.

    A line with too few or too many columns is a :class:`ProtocolError` naming the line
    and the expected ``layout`` (e.g. 'img tid mid').
    """
    try:
        fh = open(path, "r", encoding="utf-8")
    except OSError as exc:
        raise ProtocolError(path, f"cannot read file ({exc.strerror or exc})") from None
    with fh:
        try:
            for no, line in enumerate(fh, 1):
                tok = line.split()
                if not tok:
                    continue
                if len(tok) != n_cols:
                    raise ProtocolError(path, f"expected {n_cols} columns '{layout}', got "
                                        f"{len(tok)}", f"line {no}")
                yield no, tok
        except UnicodeDecodeError:
            raise ProtocolError(path, "not a UTF-8 text file") from None


def to_int(text: str, path: str, line: int, what: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ProtocolError(path, f"{what} {text!r} is not an integer", f"line {line}") from None
    if not -(1 << 63) <= v < (1 << 63):  # ids end up in int64 arrays
        raise ProtocolError(path, f"{what} {text[:40]} is out of the 64-bit range", f"line {line}")
    return v


def to_float(text: str, path: str, line: int, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ProtocolError(path, f"{what} {text!r} is not a number", f"line {line}") from None
    if not np.isfinite(v):
        raise ProtocolError(path, f"{what} is {text}", f"line {line}")
    return v


# ----------------------------------------------------------------------------- .mat
_MAT_PROBE = "import sys, scipy.io; scipy.io.loadmat(sys.argv[1])"


def _probe_mat(path: str) -> None:
    """Parse ``path`` once in a child process first: scipy's compiled MAT reader can
    crash the interpreter (SIGSEGV) on corrupt bytes (found by tests/test_fuzz_parsers.py),
    which no ``except`` could turn into an error naming the file."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    try:
        r = subprocess.run([sys.executable, "-c", _MAT_PROBE, path], env=env, timeout=600,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ProtocolError(path, "corrupt .mat file: reading it did not finish") from None
    if r.returncode < 0:
        raise ProtocolError(path, f"corrupt .mat file: the MATLAB reader (scipy.io.loadmat) "
                            f"crashed on it (signal {-r.returncode})")


def load_mat(path: str) -> Dict[str, Any]:
    import scipy.io

    if os.path.isfile(path):
        _probe_mat(path)
    try:
        return scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises MatReadError, IndexError, zlib.error, ... on bad bytes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ProtocolError(path, f"not a readable MATLAB .mat file ({first})") from None


def mat_key(mat: Dict[str, Any], key: str, path: str) -> np.ndarray:
    if key not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ProtocolError(path, f"has no variable {key!r} (variables: "
                            f"{', '.join(keys) or 'none'})", f"key {key}")
    return np.asarray(mat[key])


def _cell_string(v: Any) -> Optional[str]:
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "U" and v.size == 1:
            return str(v.reshape(-1)[0]).strip()
        if v.dtype == object and v.size == 1:
            return _cell_string(v.reshape(-1)[0])
    return None


def mat_strings(mat: Dict[str, Any], key: str, path: str) -> List[str]:
    """A MATLAB cell array (N x 1 or 1 x N) or char matrix of file names -> list."""
    arr = mat_key(mat, key, path)
    if arr.dtype.kind == "U":
        return [str(s).strip() for s in arr.reshape(-1)]
    if arr.dtype != object or (arr.ndim == 2 and min(arr.shape) > 1):
        raise ProtocolError(path, f"expected a list of file names, got a {arr.dtype} array "
                            f"of shape {arr.shape}", f"key {key}")
    out = []
    for i, v in enumerate(arr.reshape(-1)):
        s = _cell_string(v)
        if not s:
            raise ProtocolError(path, f"entry is not a file name ({v!r})", f"{key}[{i}]")
        out.append(s)
    return out


def mat_string_pairs(mat: Dict[str, Any], key: str, path: str) -> List[Tuple[str, str]]:
    """An N x 2 MATLAB cell array of file names -> list of pairs."""
    arr = mat_key(mat, key, path)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ProtocolError(path, f"expected an N x 2 cell array of file names, got shape "
                            f"{arr.shape}", f"key {key}")
    out = []
    for i in range(arr.shape[0]):
        a, b = _cell_string(arr[i, 0]), _cell_string(arr[i, 1])
        if not a or not b:
            raise ProtocolError(path, f"row is not two file names ({arr[i].tolist()!r})",
                                f"{key}[{i}]")
        out.append((a, b))
    return out


def mat_ints(mat: Dict[str, Any], key: str, path: str, n: Optional[int] = None) -> np.ndarray:
    arr = mat_key(mat, key, path)
    if arr.dtype.kind not in "iuf" or (arr.ndim == 2 and min(arr.shape) > 1):
        raise ProtocolError(path, f"expected a vector of integer ids, got a {arr.dtype} array "
                            f"of shape {arr.shape}", f"key {key}")
    v = arr.reshape(-1)
    if v.dtype.kind == "f" and not (np.isfinite(v).all() and (v == np.round(v)).all()):
        raise ProtocolError(path, "ids must be integers", f"key {key}")
    if n is not None and v.size != n:
        raise ProtocolError(path, f"{v.size} ids for {n} file names", f"key {key}")
    return v.astype(np.int64)


# ----------------------------------------------------------------------------- scores
def pair_cosines(feats_a: np.ndarray, idx_a: np.ndarray, feats_b: np.ndarray,
                 idx_b: np.ndarray, block: int = 16384) -> np.ndarray:
    """``<feats_a[idx_a[k]], feats_b[idx_b[k]]>`` for every k, gathered in blocks."""
    out = np.empty(len(idx_a), np.float32)
    for s in range(0, len(idx_a), block):
        out[s:s + block] = np.einsum("ij,ij->i", feats_a[idx_a[s:s + block]],
                                     feats_b[idx_b[s:s + block]])
    return out


def similarity_blocks(probe: np.ndarray, gallery: np.ndarray, budget: int = 1 << 24
                      ) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield (first probe row, probes-block x gallery cosine matrix) within ``budget``
    elements per block, so a 200k x 150k similarity is never held at once."""
    rows = max(1, budget // max(gallery.shape[0], 1))
    for s in range(0, probe.shape[0], rows):
        yield s, probe[s:s + rows] @ gallery.T


def operating_points(points: Dict[float, Any]) -> Dict[str, Dict[str, Any]]:
    """metrics.OperatingPoint dict -> JSON-ready {far label: {tar, threshold, ...}}."""
    from ..report import far_label

    return {far_label(f): {"tar": p.tar, "threshold": p.threshold, "achieved_far": p.achieved_far,
                           "false_accepts": p.false_accepts, "measurable": p.measurable}
            for f, p in points.items()}
