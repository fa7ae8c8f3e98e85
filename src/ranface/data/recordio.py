"""insightface / MXNet RecordIO (``.rec`` + ``.idx``) in pure Python, no mxnet needed.

File layout (dmlc-core ``recordio.h``): every frame is

    uint32 magic 0xced7230a | uint32 lrec | payload | zero padding to 4 bytes

with ``lrec = cflag << 29 | length``. A record is one frame (cflag 0) or a chain of
frames (1 = start, 2 = middle, 3 = end). The writer splits a record wherever the magic
word occurs at a 4-aligned offset of the payload and drops that word; the reader puts
it back between the parts. This lets a scanner resynchronise on magic words.

An image record starts with the MXNet ``IRHeader`` (struct ``IfQQ``: flag, label, id,
id2); when ``flag > 0``, ``flag`` float32 labels follow and ``label`` is unused.

insightface's training layout: record 0 has labels ``(a, b)``; records ``1..a-1`` are
images (label = class id), records ``a..b-1`` are one per identity, with labels
``(start, end)``: that identity's image key range.

The ``.idx`` file is text, one ``key<TAB>offset`` line per record.
"""
from __future__ import annotations

import io
import math
import numbers
import os
import struct
import warnings
from collections import namedtuple
from typing import Iterable, List, Optional, Tuple, Union

import numpy as np

from ..errors import DataError

PathLike = Union[str, "os.PathLike[str]"]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_LEN_BITS = 29
_LEN_MASK = (1 << _LEN_BITS) - 1
# dmlc-core refuses records of 2^29 bytes or more (the length field has 29 bits).
MAX_RECORD_BYTES = (1 << _LEN_BITS) - 1

IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24
# float32 represents every integer up to 2^24 exactly; larger class ids would be rounded.
_MAX_FLOAT_INT = 1 << 24

IRHeader = namedtuple("IRHeader", ["flag", "label", "id", "id2"])
IRHeader.__doc__ = """MXNet image-record header.

``label`` is a float when ``flag == 0``, else a float32 array of ``flag`` labels."""


# ---------------------------------------------------------------------------- header

def pack(header: Tuple, payload: bytes) -> bytes:
    """Prefix ``payload`` with an ``IRHeader``, like ``mx.recordio.pack``.

    A scalar label is stored in the header (flag 0); a sequence of labels is stored as
    float32 after the header, with ``flag`` = its length (the given flag is ignored).
    """
    _, label, id_, id2 = header
    if isinstance(label, numbers.Number):
        return struct.pack(IR_FORMAT, 0, float(label), int(id_), int(id2)) + bytes(payload)
    labels = np.asarray(label, dtype="<f4").ravel()
    head = struct.pack(IR_FORMAT, labels.size, 0.0, int(id_), int(id2))
    return head + labels.tobytes() + bytes(payload)


def unpack(record: bytes, source: Optional[str] = None) -> Tuple[IRHeader, bytes]:
    """Split a record into its ``IRHeader`` and payload (``source`` names it in errors)."""
    if len(record) < IR_SIZE:
        raise DataError(source, f"record of {len(record)} bytes is shorter than the "
                        f"{IR_SIZE}-byte image-record header")
    flag, label, id_, id2 = struct.unpack_from(IR_FORMAT, record, 0)
    if flag == 0:
        return IRHeader(flag, label, id_, id2), bytes(record[IR_SIZE:])
    end = IR_SIZE + 4 * flag
    if end > len(record):
        raise DataError(source, f"header announces {flag} float labels but the record "
                        f"has only {len(record) - IR_SIZE} bytes after the header")
    labels = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
    return IRHeader(flag, labels, id_, id2), bytes(record[end:])


def header_label(header: IRHeader, source: Optional[str] = None) -> int:
    """Class id of an image record: ``label`` if ``flag == 0``, else the first array label."""
    value = float(header.label[0]) if header.flag > 0 else float(header.label)
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise DataError(source, f"label {value!r} is not a non-negative integer class id")
    return int(value)


# ---------------------------------------------------------------------------- framing

def frame_record(record: bytes) -> bytes:
    """Encode one record as RecordIO frames, byte-identical to dmlc-core's writer.

    The record is cut at every 4-aligned occurrence of the magic word (the word itself
    is dropped), giving frames with flags 1, 2, ..., 3; otherwise one frame, flag 0.
    Only the last frame can have a length that is not a multiple of 4, so padding is
    needed only at the end.
    """
    data = bytes(record)
    n = len(data)
    if n > MAX_RECORD_BYTES:
        raise ValueError(f"RecordIO records must be under 2^29 bytes, got {n}")
    out: List[bytes] = []
    start = 0
    pos = data.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= n:
        if pos % 4 == 0:
            cflag = 1 if start == 0 else 2
            out.append(_FRAME.pack(MAGIC, (cflag << _LEN_BITS) | (pos - start)))
            out.append(data[start:pos])
            start = pos + 4
            pos = data.find(_MAGIC_BYTES, start)
        else:
            pos = data.find(_MAGIC_BYTES, pos + 1)
    cflag = 3 if start != 0 else 0
    out.append(_FRAME.pack(MAGIC, (cflag << _LEN_BITS) | (n - start)))
    out.append(data[start:])
    out.append(b"\0" * (-n % 4))
    return b"".join(out)


# ---------------------------------------------------------------------------- index

def _load_idx(idx_path: str, rec_path: str, rec_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Parse ``key<TAB>offset`` lines into (keys, offsets) int64 arrays, in file order."""
    try:
        with open(idx_path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise DataError(idx_path, f"cannot read index file ({exc.strerror or exc})") from None
    if not data.strip():
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Fast path: numpy's C parser reads MS1M's 5.8M lines in about a second. Anything
    # it dislikes goes through the line-by-line parser, which names the bad line.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = np.loadtxt(io.BytesIO(data), dtype=np.int64, delimiter="\t",
                               comments=None, ndmin=2)
        if table.shape[1] == 2:
            keys, offsets = table[:, 0].copy(), table[:, 1].copy()
            if offsets.min() >= 0 and offsets.max() + _FRAME.size <= rec_size and (
                    np.array_equal(keys, np.arange(keys.size))
                    or np.unique(keys).size == keys.size):
                return keys, offsets
    except ValueError:
        pass
    return _load_idx_slow(data, idx_path, rec_path, rec_size)


def _load_idx_slow(data: bytes, idx_path: str, rec_path: str, rec_size: int
                   ) -> Tuple[np.ndarray, np.ndarray]:
    keys: List[int] = []
    offsets: List[int] = []
    first_line = {}  # key -> 1-based line number, to name both lines of a duplicate
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.strip()
        if not line:
            continue  # blank (e.g. trailing) lines carry nothing
        parts = line.split(b"\t")
        try:
            if len(parts) != 2:
                raise ValueError
            key, off = int(parts[0]), int(parts[1])
            if not -(1 << 63) <= key < (1 << 63):
                raise ValueError
        except ValueError:
            shown = line[:60].decode("utf-8", "replace")
            raise DataError(idx_path, f"expected 'key<TAB>offset', got {shown!r}",
                            f"line {lineno}") from None
        if off < 0 or off + _FRAME.size > rec_size:
            raise DataError(idx_path, f"offset {off} is past the end of {rec_path} "
                            f"({rec_size} bytes)", f"line {lineno}")
        if key in first_line:
            raise DataError(idx_path, f"duplicate key {key} (first on line "
                            f"{first_line[key]})", f"line {lineno}")
        first_line[key] = lineno
        keys.append(key)
        offsets.append(off)
    return np.asarray(keys, dtype=np.int64), np.asarray(offsets, dtype=np.int64)


# ---------------------------------------------------------------------------- reader

class RecordReader:
    """Reads records sequentially (``read``) or by key (``read_idx``) from a ``.rec``.

    Safe for DataLoader workers: the file is opened lazily and reopened when the
    process id changes (a forked worker must not share the parent's handle), and the
    handle is dropped when pickled (spawned workers). Reads use ``os.pread`` where
    available, so concurrent ``read_idx`` calls from threads do not race on a seek.
    """

    def __init__(self, rec_path: PathLike, idx_path: Optional[PathLike] = None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = None if idx_path is None else os.fspath(idx_path)
        try:
            size = os.stat(self.rec_path).st_size
        except OSError as exc:
            raise DataError(self.rec_path, f"cannot open RecordIO file "
                            f"({exc.strerror or exc})") from None
        self._size = size
        self._fh = None
        self._pid: Optional[int] = None
        self._pos = 0  # sequential read position
        self._keys = np.zeros(0, dtype=np.int64)
        self._offsets = np.zeros(0, dtype=np.int64)
        self._dense = True  # keys == 0..n-1 in order: index offsets directly
        self._sorted_keys = self._keys
        self._sorted_rows = self._keys
        if self.idx_path is not None:
            self._keys, self._offsets = _load_idx(self.idx_path, self.rec_path, size)
            n = self._keys.size
            self._dense = bool(np.array_equal(self._keys, np.arange(n)))
            if not self._dense:
                self._sorted_rows = np.argsort(self._keys, kind="stable")
                self._sorted_keys = self._keys[self._sorted_rows]

    # -- file handle -------------------------------------------------------------
    def _handle(self):
        pid = os.getpid()
        if self._fh is None or self._pid != pid:
            # A forked worker opens its own handle; the inherited one is only dropped
            # (its descriptor is the child's copy, so the parent's stays open).
            try:
                fh = open(self.rec_path, "rb", buffering=0)
            except OSError as exc:
                raise DataError(self.rec_path, f"cannot open RecordIO file "
                                f"({exc.strerror or exc})") from None
            self._fh, self._pid = fh, pid
            self._size = os.fstat(fh.fileno()).st_size
        return self._fh

    def _pread(self, offset: int, n: int) -> bytes:
        fh = self._handle()
        if hasattr(os, "pread"):
            chunks = []
            while n > 0:
                chunk = os.pread(fh.fileno(), n, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                offset += len(chunk)
                n -= len(chunk)
            return b"".join(chunks)
        fh.seek(offset)
        return fh.read(n)

    def close(self) -> None:
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh, self._pid = None, None

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fh"], state["_pid"] = None, None
        return state

    # -- framing -------------------------------------------------------------------
    def _where(self, offset: int, key: Optional[int]) -> str:
        return f"offset {offset}" if key is None else f"key {key}, offset {offset}"

    def _frame_header(self, pos: int, key: Optional[int]) -> Tuple[int, int]:
        head = self._pread(pos, _FRAME.size)
        if len(head) < _FRAME.size:
            raise DataError(self.rec_path, f"truncated record: {len(head)} of 8 frame-header "
                            "bytes before the end of the file", self._where(pos, key))
        magic, lrec = _FRAME.unpack(head)
        if magic != MAGIC:
            raise DataError(self.rec_path, f"bad magic 0x{magic:08x}, expected 0x{MAGIC:08x} "
                            "(not RecordIO, or a wrong .idx offset)", self._where(pos, key))
        cflag, length = lrec >> _LEN_BITS, lrec & _LEN_MASK
        if cflag > 3:
            raise DataError(self.rec_path, f"invalid continuation flag {cflag}",
                            self._where(pos, key))
        # Compare with the file size before reading so a corrupt length word cannot
        # make us allocate up to 512 MiB.
        left = self._size - pos - _FRAME.size
        if length > left:
            raise DataError(self.rec_path, f"truncated record: frame claims {length} bytes "
                            f"but only {left} remain in the file", self._where(pos, key))
        return cflag, length

    def _read_at(self, offset: int, key: Optional[int] = None,
                 limit: Optional[int] = None) -> Tuple[bytes, int]:
        """Reassemble the record at ``offset``; return (record, offset of the next one).

        With ``limit``, stop once at least ``limit`` bytes are known (the result is then
        only a prefix, and the next offset is meaningless).
        """
        self._handle()
        parts: List[bytes] = []
        have = 0
        pos = offset
        first = True
        while True:
            cflag, length = self._frame_header(pos, key)
            if first and cflag in (2, 3):
                raise DataError(self.rec_path, f"record starts with a continuation frame "
                                f"(flag {cflag})", self._where(pos, key))
            if not first and cflag in (0, 1):
                raise DataError(self.rec_path, f"record ends without its final frame "
                                f"(flag {cflag} inside a multi-part record)",
                                self._where(pos, key))
            want = length if limit is None else min(length, max(limit - have, 0))
            part = self._pread(pos + _FRAME.size, want)
            if len(part) < want:
                raise DataError(self.rec_path, "truncated record: file ended while reading",
                                self._where(pos, key))
            parts.append(part)
            have += len(part) + 4
            pos += _FRAME.size + length + (-length % 4)
            if cflag in (0, 3) or (limit is not None and have >= limit + 4):
                break
            first = False
        return _MAGIC_BYTES.join(parts), pos

    # -- public API --------------------------------------------------------------
    def read(self) -> Optional[bytes]:
        """Next record in file order, or None at the end of the file."""
        self._handle()
        if self._pos >= self._size:
            return None
        record, self._pos = self._read_at(self._pos)
        return record

    def reset(self) -> None:
        """Rewind sequential reading to the first record."""
        self._pos = 0

    def tell(self) -> int:
        """Byte offset of the record the next ``read()`` returns."""
        return self._pos

    def seek(self, offset: int) -> None:
        """Continue sequential reading at byte ``offset`` (e.g. one from the index)."""
        self._pos = int(offset)

    def offset_of(self, key: int) -> int:
        """Byte offset of ``key`` from the index."""
        if self.idx_path is None:
            raise DataError(self.rec_path, "random access needs an .idx file", f"key {key}")
        k = int(key)
        if self._dense:
            if 0 <= k < self._offsets.size:
                return int(self._offsets[k])
        else:
            i = int(np.searchsorted(self._sorted_keys, k))
            if i < self._sorted_keys.size and self._sorted_keys[i] == k:
                return int(self._offsets[self._sorted_rows[i]])
        raise DataError(self.idx_path, "key not in the index", f"key {k}")

    def read_idx(self, key: int) -> bytes:
        """The record stored under ``key``."""
        return self._read_at(self.offset_of(key), int(key))[0]

    def read_header(self, key: int) -> IRHeader:
        """Only the ``IRHeader`` of record ``key``, reading a few dozen bytes, not the image."""
        offset = self.offset_of(key)
        source = f"{self.rec_path} (key {key})"
        # Most headers carry at most two float labels: one short read covers them.
        prefix, _ = self._read_at(offset, int(key), limit=IR_SIZE + 8)
        flag = struct.unpack_from("<I", prefix, 0)[0] if len(prefix) >= 4 else 0
        if flag > 2:
            prefix, _ = self._read_at(offset, int(key), limit=IR_SIZE + 4 * flag)
        return unpack(prefix, source)[0]

    @property
    def keys(self) -> List[int]:
        """Keys of the index in file order (a new list; O(n))."""
        return self._keys.tolist()

    def key_array(self) -> np.ndarray:
        """Keys of the index in file order as an int64 array (a copy)."""
        return self._keys.copy()

    def missing_keys(self, keys: np.ndarray) -> np.ndarray:
        """Those of ``keys`` that the index lacks."""
        keys = np.asarray(keys, dtype=np.int64)
        if self._dense:
            return keys[(keys < 0) | (keys >= self._keys.size)]
        return keys[~np.isin(keys, self._sorted_keys)]

    def __contains__(self, key: object) -> bool:
        try:
            self.offset_of(int(key))  # type: ignore[arg-type]
        except (DataError, TypeError, ValueError):
            return False
        return True

    def __len__(self) -> int:
        return int(self._keys.size)

    def __repr__(self) -> str:
        return f"RecordReader({self.rec_path!r}, {self.idx_path!r}, {len(self)} keys)"


# ---------------------------------------------------------------------------- writer

class RecordWriter:
    """Writes a ``.rec`` (and ``.idx``) atomically.

    Records go to temporary files next to the targets; ``close()`` (or leaving the
    ``with`` block normally) syncs them and renames them into place. Any existing
    ``.idx`` is removed first and the new one renamed last, so a crash in between leaves
    a ``.rec`` without an index, never a stale index over a new ``.rec``. Leaving the
    ``with`` block by an exception (or ``abort()``) deletes the temporary files.

    Records are framed like dmlc-core (split at aligned magic words), so MXNet can read
    the output. Keys are not checked for duplicates (the reader reports them).
    """

    def __init__(self, rec_path: PathLike, idx_path: Optional[PathLike] = None):
        self.rec_path = os.fspath(rec_path)
        self.idx_path = None if idx_path is None else os.fspath(idx_path)
        self._tmp_rec, self._rec = self._open_temp(self.rec_path)
        self._tmp_idx: Optional[str] = None
        self._idx = None
        if self.idx_path is not None:
            try:
                self._tmp_idx, self._idx = self._open_temp(self.idx_path)
            except BaseException:
                self.abort()
                raise
        self._pos = 0
        self._closed = False

    @staticmethod
    def _open_temp(path: str):
        from ..io_utils import make_temp

        try:
            fd, tmp = make_temp(path, suffix=".part")  # the permissions of any other output
        except OSError as exc:
            raise DataError(path, f"cannot create output file ({exc.strerror or exc})") from None
        return tmp, os.fdopen(fd, "wb")

    def write(self, record: bytes) -> int:
        """Append one record; return its byte offset."""
        if self._closed:
            raise ValueError("RecordWriter is closed")
        if len(record) > MAX_RECORD_BYTES:
            raise DataError(self.rec_path, f"record of {len(record)} bytes exceeds the "
                            "RecordIO limit of 2^29 - 1 bytes", f"offset {self._pos}")
        offset = self._pos
        framed = frame_record(record)
        self._rec.write(framed)
        self._pos += len(framed)
        return offset

    def write_idx(self, key: int, record: bytes) -> int:
        """Append ``record`` and index it under integer ``key``; return its offset."""
        if self._idx is None:
            raise ValueError("write_idx needs an idx_path")
        if not isinstance(key, numbers.Integral) or isinstance(key, bool):
            raise TypeError(f"RecordIO keys must be integers, got {key!r}")
        offset = self.write(record)
        self._idx.write(f"{int(key)}\t{offset}\n".encode("ascii"))
        return offset

    def close(self) -> None:
        """Finish: sync and rename the files into place."""
        if self._closed:
            return
        self._closed = True
        try:
            for fh in (self._rec, self._idx):
                if fh is not None:
                    fh.flush()
                    os.fsync(fh.fileno())
                    fh.close()
            if self.idx_path is not None and os.path.lexists(self.idx_path):
                os.remove(self.idx_path)
            os.replace(self._tmp_rec, self.rec_path)
            if self.idx_path is not None:
                os.replace(self._tmp_idx, self.idx_path)
        except BaseException:
            self._remove_temps()
            raise

    def abort(self) -> None:
        """Discard everything written; the targets are left untouched."""
        self._closed = True
        for fh in (getattr(self, "_rec", None), getattr(self, "_idx", None)):
            if fh is not None:
                try:
                    fh.close()
                except OSError:
                    pass
        self._remove_temps()

    def _remove_temps(self) -> None:
        for tmp in (getattr(self, "_tmp_rec", None), getattr(self, "_tmp_idx", None)):
            if tmp is not None and os.path.lexists(tmp):
                os.remove(tmp)

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------------------- insightface

def write_insightface_rec(out_dir: PathLike, samples: Iterable[Tuple[bytes, int]],
                          name: str = "train") -> Tuple[int, int]:
    """Write ``<name>.rec``/``<name>.idx`` in insightface's layout; return (images, classes).

    ``samples`` yields (encoded image bytes, class id) with class ids in ascending
    order (grouped by identity); it is streamed, never held in memory. Layout, keys:
    images 1..n, then one identity record per class id 0..C-1 (an unused id gets an
    empty range), then record 0 with labels (n + 1, n + 1 + C), written last like
    insightface's tools do.
    """
    out_dir = os.fspath(out_dir)
    rec_path = os.path.join(out_dir, f"{name}.rec")
    idx_path = os.path.join(out_dir, f"{name}.idx")
    if not os.path.isdir(out_dir):
        raise DataError(out_dir, "output folder does not exist")
    ranges: List[Tuple[int, int]] = []  # ranges[c] = [start, end) image keys of class c
    key = 1
    with RecordWriter(rec_path, idx_path) as writer:
        prev = -1
        for i, (data, label) in enumerate(samples):
            if not isinstance(label, numbers.Integral) or isinstance(label, bool) \
                    or not 0 <= int(label) < _MAX_FLOAT_INT:
                raise DataError(rec_path, f"label {label!r} is not an integer class id in "
                                f"[0, 2^24)", f"sample {i}")
            label = int(label)
            if label < prev:
                raise DataError(rec_path, f"samples must come grouped by class id in "
                                f"ascending order: label {label} after {prev}", f"sample {i}")
            while len(ranges) <= label:
                ranges.append((key, key))
            ranges[label] = (ranges[label][0], key + 1)
            writer.write_idx(key, pack(IRHeader(0, float(label), key, 0), data))
            prev = label
            key += 1
        if key == 1:
            raise DataError(out_dir, "no samples to write")
        first_id = key
        for start, end in ranges:
            writer.write_idx(key, pack(IRHeader(0, [start, end], key, 0), b""))
            key += 1
        writer.write_idx(0, pack(IRHeader(0, [first_id, key], 0, 0), b""))
    return first_id - 1, len(ranges)


def read_insightface_index(reader: RecordReader, use_identity_records: bool = True
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """Image keys and class ids (int64 arrays) of an insightface ``.rec``.

    With a header record 0 (labels ``(a, b)``), images are keys ``1..a-1``; their labels
    come from the identity records ``a..b-1`` when those tile ``1..a-1`` in order (fast:
    one small read per class), checked against the first image of the first and last
    class. Otherwise (no header record, identity records missing or inconsistent, or
    ``use_identity_records=False``) every image header is read; a warning says why
    when the identity records were unusable.
    """
    if reader.idx_path is None:
        raise DataError(reader.rec_path, "an insightface dataset needs its .idx file")
    src = reader.rec_path
    image_keys: Optional[np.ndarray] = None
    if 0 in reader:
        h0 = reader.read_header(0)
        if h0.flag >= 2:
            a, b = float(h0.label[0]), float(h0.label[1])
            if not (a == int(a) and b == int(b) and 1 <= a <= b):
                raise DataError(src, f"header record labels ({a}, {b}) are not a valid "
                                "(first identity key, end key) pair", "key 0")
            a, b = int(a), int(b)
            if b - 1 > len(reader):  # checked before allocating b keys (b may be 2^31)
                raise DataError(reader.idx_path, f"header record 0 names keys 1..{b - 1} but "
                                f"the index has only {len(reader)} keys", "key 0")
            image_keys = np.arange(1, a, dtype=np.int64)
            missing = reader.missing_keys(np.arange(1, b, dtype=np.int64))
            if missing.size:
                raise DataError(reader.idx_path, f"{missing.size} keys named by header "
                                f"record 0 (1..{b - 1}) are missing from the index",
                                f"key {int(missing[0])}")
            if use_identity_records and b > a:
                labels, why = _labels_from_identities(reader, a, b)
                if labels is not None:
                    return image_keys, labels
                warnings.warn(f"{src}: identity records unusable ({why}); reading every "
                              "image header instead", stacklevel=2)
    if image_keys is None:
        image_keys = np.asarray([k for k in reader.keys if k != 0], dtype=np.int64)
    labels = np.fromiter((header_label(reader.read_header(int(k)), f"{src} (key {k})")
                          for k in image_keys), dtype=np.int64, count=image_keys.size)
    return image_keys, labels


def _labels_from_identities(reader: RecordReader, a: int, b: int
                            ) -> Tuple[Optional[np.ndarray], str]:
    counts = np.zeros(b - a, dtype=np.int64)
    expect = 1
    for i, key in enumerate(range(a, b)):
        h = reader.read_header(key)
        if h.flag < 2:
            return None, f"key {key} has no (start, end) labels"
        start, end = float(h.label[0]), float(h.label[1])
        if start != expect or end < start or end != int(end):
            return None, f"key {key} range ({start}, {end}) does not continue at {expect}"
        counts[i] = int(end) - int(start)
        expect = int(end)
    if expect != a:
        return None, f"identity ranges end at key {expect}, images end at key {a}"
    labels = np.repeat(np.arange(b - a, dtype=np.int64), counts)
    nonempty = np.flatnonzero(counts)
    starts = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])
    probe = {int(nonempty[0]), int(nonempty[-1])} if nonempty.size else set()
    for cls in sorted(probe):
        key = int(starts[cls])
        got = header_label(reader.read_header(key), f"{reader.rec_path} (key {key})")
        if got != cls:
            return None, f"image key {key} has label {got} but identity record says {cls}"
    return labels, ""
