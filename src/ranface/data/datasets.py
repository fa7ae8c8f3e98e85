"""Face datasets: image folders, insightface RecordIO, and paired HR/LR views.

Every dataset returns ``(item, label)``: ``item`` is ``transform(array)`` when a
transform is given, else the HxWx3 uint8 array in the requested colour order. Each
exposes ``labels`` (int64 array, one per sample) so samplers and
:class:`PairedDataset` can work without decoding images.

Bad samples: with ``on_error='raise'`` a :class:`DataError` naming the file (and
record key) propagates; with ``on_error='skip'`` ``__getitem__`` returns a
:class:`Skipped` instead, and :func:`collate_skipping` drops it from the batch and
hands its message to the trainer, which counts and reports skips.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset
from torch.utils.data import default_collate

from ..errors import DataError
from .image import decode_image, image_extensions, read_image
from .recordio import RecordReader, header_label, read_insightface_index, unpack

PathLike = Union[str, "os.PathLike[str]"]
Transform = Callable[[np.ndarray], Any]

ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class Skipped:
    """Placeholder for a sample that failed to load in ``on_error='skip'`` mode.

    ``arity`` is how many fields a good sample of the dataset has, so a batch made only
    of skips still collates to the usual shape.
    """

    index: int
    message: str
    arity: int = 2


def _check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


def collate_skipping(batch: Sequence[Any]) -> Tuple[Any, ...]:
    """Collate a batch that may contain :class:`Skipped` items.

    Returns the default-collated fields of the good items followed by the list of
    skip messages: ``(images, labels, messages)`` for plain datasets,
    ``(hr, lr, labels, messages)`` for :class:`PairedDataset`. When every item was
    skipped, the fields are None.
    """
    kept = [b for b in batch if not isinstance(b, Skipped)]
    messages = [b.message for b in batch if isinstance(b, Skipped)]
    if not kept:
        arity = batch[0].arity if batch else 2
        return (*([None] * arity), messages)
    return (*default_collate(kept), messages)


class _FaceDataset(Dataset):
    """Shared decode / transform / skip logic; subclasses implement ``_load``."""

    labels: np.ndarray

    def __init__(self, color: str, expect_size: Optional[Tuple[int, int]],
                 transform: Optional[Transform], on_error: str):
        if color not in ("rgb", "bgr"):
            raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
        self.color = color
        self.expect_size = None if expect_size is None else tuple(expect_size)
        self.transform = transform
        self.on_error = _check_on_error(on_error)

    def _load(self, index: int) -> Tuple[np.ndarray, int]:
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, index: int) -> Union[Tuple[Any, int], Skipped]:
        try:
            arr, label = self._load(index)
        except DataError as exc:
            if self.on_error == "skip":
                return Skipped(int(index), str(exc))
            raise
        item = self.transform(arr) if self.transform is not None else arr
        return item, label


class ImageFolderDataset(_FaceDataset):
    """Aligned faces stored as ``<root>/<identity>/<image>``.

    ``classes`` are the identity folder names, sorted; label i is ``classes[i]``.
    Only files directly inside an identity folder with one of ``extensions``
    (case-insensitive) count; hidden folders are ignored. An identity folder without
    images is an error, or with ``on_error='skip'`` it is dropped (not given a label)
    and its message kept in ``scan_skipped``.
    """

    def __init__(self, root: PathLike, color: str = "rgb",
                 expect_size: Optional[Tuple[int, int]] = None,
                 transform: Optional[Transform] = None, on_error: str = "raise",
                 extensions: Optional[Sequence[str]] = None):
        super().__init__(color, expect_size, transform, on_error)
        self.root = os.fspath(root)
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in (extensions or image_extensions()))
        if not os.path.isdir(self.root):
            raise DataError(self.root, "image folder not found" if not os.path.exists(self.root)
                            else "not a folder")
        with os.scandir(self.root) as it:
            identities = sorted(e.name for e in it
                                if e.is_dir() and not e.name.startswith("."))
        if not identities:
            raise DataError(self.root, "no identity folders (expected <root>/<identity>/"
                            "<image>)")
        self.classes: List[str] = []
        self.samples: List[Tuple[str, int]] = []
        self.scan_skipped: List[str] = []
        for name in identities:
            folder = os.path.join(self.root, name)
            with os.scandir(folder) as it:
                files = sorted(e.name for e in it
                               if e.name.lower().endswith(exts) and e.is_file())
            if not files:
                err = DataError(folder, f"identity folder has no images ({', '.join(exts)})")
                if self.on_error == "raise":
                    raise err
                self.scan_skipped.append(str(err))
                continue
            label = len(self.classes)
            self.classes.append(name)
            self.samples.extend((os.path.join(folder, f), label) for f in files)
        if not self.samples:
            raise DataError(self.root, "no images in any identity folder")
        self.labels = np.asarray([lab for _, lab in self.samples], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _load(self, index: int) -> Tuple[np.ndarray, int]:
        path, label = self.samples[index]
        return read_image(path, self.color, self.expect_size), label


def _resolve_rec(root_or_rec: PathLike) -> Tuple[str, str]:
    path = os.fspath(root_or_rec)
    if os.path.isdir(path):
        rec, idx = os.path.join(path, "train.rec"), os.path.join(path, "train.idx")
    elif path.endswith(".rec"):
        rec, idx = path, path[:-4] + ".idx"
    else:
        raise DataError(path, "expected a folder with train.rec/train.idx or a .rec file")
    for p, what in ((rec, "RecordIO file"), (idx, "index file (.idx)")):
        if not os.path.isfile(p):
            raise DataError(p, f"{what} not found")
    return rec, idx


class RecordDataset(_FaceDataset):
    """An insightface ``train.rec``/``train.idx`` (MS1M, CASIA-WebFace, ...).

    ``root_or_rec`` is the folder holding ``train.rec``/``train.idx`` or a ``.rec`` path
    (its ``.idx`` next to it). Labels come from the record headers (via the identity
    records when present, see :func:`read_insightface_index`); each loaded record's own
    header label is checked against them. ``num_classes`` is ``max(label) + 1``.
    """

    def __init__(self, root_or_rec: PathLike, color: str = "rgb",
                 expect_size: Optional[Tuple[int, int]] = None,
                 transform: Optional[Transform] = None, on_error: str = "raise"):
        super().__init__(color, expect_size, transform, on_error)
        rec, idx = _resolve_rec(root_or_rec)
        self.root = rec
        self.reader = RecordReader(rec, idx)
        self.keys, self.labels = read_insightface_index(self.reader)
        if self.keys.size == 0:
            raise DataError(rec, "contains no image records")
        self.num_classes = int(self.labels.max()) + 1

    def _load(self, index: int) -> Tuple[np.ndarray, int]:
        key = int(self.keys[index])
        source = f"{self.root} (key {key})"
        header, payload = unpack(self.reader.read_idx(key), source)
        label = header_label(header, source)
        if label != self.labels[index]:
            raise DataError(self.root, f"record header says label {label} but the index "
                            f"says {int(self.labels[index])}", f"key {key}")
        return decode_image(payload, source, self.color, self.expect_size), label


class PairedDataset(Dataset):
    """The same faces at two resolutions: index i gives ``(hr_item, lr_item, label)``.

    Both datasets must have equal length and identical ``labels`` (checked here, on the
    label arrays, without decoding images). A skip in either yields one
    :class:`Skipped` for the pair.
    """

    def __init__(self, hr: Dataset, lr: Dataset):
        for name, ds in (("hr", hr), ("lr", lr)):
            if not hasattr(ds, "labels"):
                raise TypeError(f"{name} dataset has no 'labels' attribute")
        self.hr, self.lr = hr, lr
        hl = np.asarray(hr.labels, dtype=np.int64)
        ll = np.asarray(lr.labels, dtype=np.int64)
        where = getattr(lr, "root", None)
        if hl.size != ll.size:
            raise DataError(where, f"HR and LR datasets differ in size: {hl.size} vs "
                            f"{ll.size} samples")
        diff = np.flatnonzero(hl != ll)
        if diff.size:
            i = int(diff[0])
            raise DataError(where, f"HR label {hl[i]} but LR label {ll[i]} "
                            f"({diff.size} mismatches in all); the LR set must hold the same "
                            "faces in the same order", f"sample {i}")
        self.labels = hl

    def __len__(self) -> int:
        return int(self.labels.size)

    def __getitem__(self, index: int) -> Union[Tuple[Any, Any, int], Skipped]:
        h, low = self.hr[index], self.lr[index]
        bad = [s.message for s in (h, low) if isinstance(s, Skipped)]
        if bad:
            return Skipped(int(index), "; ".join(bad), arity=3)
        return h[0], low[0], h[1]
