"""insightface verification ``.bin`` files (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, ...).

A ``.bin`` is a pickle of ``(images, issame)``: ``images`` a list of encoded JPEG/PNG
bytes, ``issame`` a list (or numpy bool array) with ``issame[i]`` telling whether
images ``2i`` and ``2i+1`` show the same person. Most were written by Python 2, so
they are read with ``encoding='bytes'``.

A pickle can run arbitrary code on load, so these files go through
:class:`_BinUnpickler`, which resolves no global except the handful numpy needs to
rebuild a *bool* array (each wrapped so it can build nothing else), and the result
is then checked to hold only bytes, str, list, tuple, bool, int and bool arrays.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import DataError, UnsafePickleError
from .image import decode_image

PathLike = Union[str, "os.PathLike[str]"]

_ALLOWED_TYPES = (bytes, str, bool, int)


class _NdarrayRef:
    """Stands in for ``numpy.ndarray`` inside the pickle: usable only as the subtype
    argument of ``_reconstruct``, not callable, so no arbitrary array can be made."""


_NDARRAY = _NdarrayRef()


class _BinUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy bool arrays and plain containers, nothing else."""

    def __init__(self, fh: io.BufferedIOBase, path: str):
        super().__init__(fh, encoding="bytes")
        self.path = path
        self._globals: Dict[Tuple[str, str], Any] = {
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): self._dtype,
            # Python 3 writes bytes as _codecs.encode(str, 'latin1') in protocols 0-2.
            ("_codecs", "encode"): self._latin1_bytes,
        }
        for mod in ("numpy.core", "numpy._core"):
            self._globals[(f"{mod}.multiarray", "_reconstruct")] = self._reconstruct
            self._globals[(f"{mod}.numeric", "_frombuffer")] = self._frombuffer

    def _refuse(self, what: str) -> UnsafePickleError:
        return UnsafePickleError(self.path, f"refused {what}: a verification .bin may hold "
                                 "only image bytes and a bool list; nothing was executed")

    def find_class(self, module: str, name: str) -> Any:
        key = (str(module), str(name))
        if key in self._globals:
            return self._globals[key]
        raise self._refuse(f"global {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise self._refuse("a persistent id")

    # -- the only callables a .bin can reach --------------------------------------
    def _dtype(self, spec: Any, *flags: Any) -> np.dtype:
        if isinstance(spec, bytes):
            spec = spec.decode("ascii", "replace")
        if not isinstance(spec, str) or len(spec) > 8 or not all(isinstance(f, (bool, int))
                                                                 for f in flags):
            raise self._refuse(f"numpy.dtype{(spec, *flags)!r}")
        try:
            # copy=True: the pickle's BUILD then mutates a private copy, never numpy's
            # shared bool descriptor.
            dt = np.dtype(spec, False, True)
        except TypeError:
            raise self._refuse(f"numpy.dtype({spec!r})") from None
        if dt.kind != "b":
            raise self._refuse(f"a numpy array of dtype {dt} (only bool arrays are allowed)")
        return dt

    def _reconstruct(self, subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
        # numpy pickles an array as _reconstruct(ndarray, (0,), b'b') plus a BUILD
        # state that sets the real dtype and data; allow exactly that empty start.
        if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
            raise self._refuse(f"numpy _reconstruct{(subtype, shape, typecode)!r}")
        return np.zeros((0,), dtype=np.int8)

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        # numpy's protocol-5 form; dtype may arrive as a plain string, so check it here.
        dt = dtype if isinstance(dtype, np.dtype) else self._dtype(dtype)
        if dt.kind != "b" or not isinstance(buf, (bytes, bytearray)) or order not in (
                "C", "F", b"C", b"F") or not isinstance(shape, tuple) or not all(
                isinstance(s, int) and s >= 0 for s in shape):
            raise self._refuse("numpy _frombuffer with unexpected arguments")
        flat = np.frombuffer(bytes(buf), dtype=np.uint8) != 0
        order = order.decode() if isinstance(order, bytes) else order
        try:
            return flat.reshape(shape, order=order)
        except ValueError:
            raise DataError(self.path, f"bool array of {flat.size} bytes does not have "
                            f"shape {shape}") from None

    def _latin1_bytes(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise self._refuse(f"_codecs.encode with arguments {(type(text).__name__, encoding)}")
        return text.encode("latin1")


def _check_admitted(obj: Any, path: str) -> None:
    """Raise UnsafePickleError if anything but admitted types occurs anywhere in ``obj``."""
    stack: List[Tuple[Any, str]] = [(obj, "top level")]
    seen = set()
    while stack:
        item, where = stack.pop()
        kind = type(item)
        if kind in _ALLOWED_TYPES:
            continue
        if kind in (list, tuple):
            if id(item) in seen:  # pickles can make self-referencing lists
                raise UnsafePickleError(path, f"self-referencing container at {where}")
            seen.add(id(item))
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
            continue
        if kind is np.ndarray and item.dtype == np.dtype(bool):
            continue
        what = f"numpy array of dtype {item.dtype}" if kind is np.ndarray else kind.__name__
        raise UnsafePickleError(path, f"a {what} at {where} is not allowed (only bytes, str, "
                                "list, tuple, bool, int and numpy bool arrays)")


def read_bin(path: PathLike) -> Tuple[List[bytes], np.ndarray]:
    """Encoded image bytes and the ``issame`` bool array of a ``.bin``, not decoded."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            obj = _BinUnpickler(fh, path).load()
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror or exc})") from None
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error, OverflowError, RecursionError,
            MemoryError) as exc:
        raise DataError(path, f"not a readable verification .bin pickle "
                        f"({type(exc).__name__}: {exc})") from None
    _check_admitted(obj, path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(path, "expected a pickled (images, issame) pair at top level")
    images, issame = obj
    if not isinstance(images, (list, tuple)):
        raise DataError(path, f"images must be a list of encoded bytes, got "
                        f"{type(images).__name__}")
    for k, data in enumerate(images):
        if not isinstance(data, bytes):
            raise DataError(path, f"expected encoded image bytes, got {type(data).__name__}",
                            f"image {k}")
    if isinstance(issame, np.ndarray):
        if issame.ndim != 1:
            raise DataError(path, f"issame must be 1-D, got shape {issame.shape}")
        # A pickled bool buffer may hold bytes other than 0/1; normalise them.
        same = np.ascontiguousarray(issame).view(np.uint8) != 0
    elif isinstance(issame, (list, tuple)):
        for i, v in enumerate(issame):
            # Python 2 may have stored 0/1 ints; anything else is not a pair label.
            if not (isinstance(v, bool) or (isinstance(v, int) and v in (0, 1))):
                raise DataError(path, f"issame value {v!r} is not a bool", f"pair {i}")
        same = np.asarray([bool(v) for v in issame], dtype=bool)
    else:
        raise DataError(path, f"issame must be a list of bools, got {type(issame).__name__}")
    if len(images) != 2 * same.size:
        raise DataError(path, f"{len(images)} images but {same.size} pairs; expected exactly "
                        "two images per pair")
    if same.size == 0:
        raise DataError(path, "contains no pairs")
    return list(images), same


def load_bin(path: PathLike, color: str = "rgb",
             image_size: Optional[Tuple[int, int]] = (112, 112)) -> Tuple[np.ndarray, np.ndarray]:
    """Decode a verification ``.bin``.

    Returns ``images`` (N x H x W x 3 uint8, ``color`` order; pair i is images 2i and
    2i+1) and ``issame`` (N/2 bools). ``image_size`` (height, width) is enforced when
    given; with None every image must match the first one's size.
    """
    path = os.fspath(path)
    encoded, issame = read_bin(path)
    out: Optional[np.ndarray] = None
    size = None if image_size is None else tuple(image_size)
    for k, data in enumerate(encoded):
        arr = decode_image(data, f"{path} (image {k})", color, size)
        if out is None:
            size = arr.shape[:2]
            out = np.empty((len(encoded), *arr.shape), dtype=np.uint8)
        out[k] = arr
    assert out is not None  # read_bin guarantees at least two images
    return out, issame


def write_bin(path: PathLike, images_bytes: Sequence[bytes],
              issame: Sequence[bool]) -> None:
    """Write a ``.bin`` that insightface's loaders (and :func:`load_bin`) read.

    Written to a temporary file and renamed, so a failure leaves no partial file.
    """
    path = os.fspath(path)
    images = [bytes(b) for b in images_bytes]
    same = [bool(v) for v in issame]
    if len(images) != 2 * len(same):
        raise ValueError(f"{len(images)} images for {len(same)} pairs; need two per pair")
    from ..io_utils import make_temp

    fd, tmp = make_temp(path, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            pickle.dump((images, same), fh, protocol=4)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
