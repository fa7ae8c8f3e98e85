"""Datasets: image folders, insightface .rec, skip mode, HR/LR pairing."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ranface.data.datasets import (ImageFolderDataset, PairedDataset, RecordDataset,
                                   Skipped, collate_skipping)
from ranface.data.image import encode_image
from ranface.data.recordio import write_insightface_rec
from ranface.errors import DataError

MAGIC = 0xCED7230A


def _solid(value: int, size=(8, 8)) -> np.ndarray:
    """An image whose every pixel is (value, value + 1, value + 2): label is readable
    back from the content, and channel order is visible."""
    arr = np.empty((*size, 3), dtype=np.uint8)
    arr[...] = (value, value + 1, value + 2)
    return arr


def _make_rec(folder, labels, corrupt_key=None):
    samples = []
    for k, lab in enumerate(labels, start=1):
        data = encode_image(_solid(10 * lab), "png")
        samples.append((data[:20] if k == corrupt_key else data, lab))
    write_insightface_rec(folder, samples)
    return folder


# --------------------------------------------------------------------------- RecordDataset

def test_record_dataset_labels_and_pixels(tmp_path):
    ds = RecordDataset(_make_rec(tmp_path, [0, 0, 1, 2, 2, 2]))
    assert len(ds) == 6 and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 0, 1, 2, 2, 2]
    img, label = ds[3]
    assert label == 2 and img.shape == (8, 8, 3) and img[0, 0].tolist() == [20, 21, 22]
    bgr = RecordDataset(tmp_path / "train.rec", color="bgr")
    assert bgr[3][0][0, 0].tolist() == [22, 21, 20]
    t = RecordDataset(tmp_path, transform=lambda a: torch.tensor(a).float().mean())
    assert float(t[2][0]) == pytest.approx(11.0)


def test_record_dataset_reads_hand_assembled_file(tmp_path):
    # flag-1 labels in the float array, no header record: built with struct only
    def frame(p):
        return struct.pack("<II", MAGIC, len(p)) + p + b"\0" * (-len(p) % 4)
    recs, offsets, pos = [], [], 0
    for k, lab in ((1, 1), (2, 0)):
        payload = struct.pack("<IfQQ", 1, 0.0, k, 0) + struct.pack("<f", lab) \
            + encode_image(_solid(lab), "png")
        recs.append(frame(payload))
        offsets.append(pos)
        pos += len(recs[-1])
    (tmp_path / "train.rec").write_bytes(b"".join(recs))
    (tmp_path / "train.idx").write_text("".join(f"{k}\t{o}\n" for k, o in
                                                zip((1, 2), offsets)))
    ds = RecordDataset(tmp_path)
    assert ds.labels.tolist() == [1, 0] and ds[0][1] == 1 and ds[0][0][0, 0, 0] == 1


def test_record_dataset_in_dataloader_workers(tmp_path):
    labels = [i // 3 for i in range(24)]
    ds = RecordDataset(_make_rec(tmp_path, labels))
    ds[0]  # open the file in the parent first: workers must not reuse its handle
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    got_labels, got_pixels = [], []
    for images, lab in loader:
        got_labels += lab.tolist()
        got_pixels += images[:, 0, 0, 0].tolist()
    assert got_labels == labels
    assert got_pixels == [10 * lab for lab in labels]


def test_record_dataset_corrupt_record_raise_and_skip(tmp_path):
    _make_rec(tmp_path, [0, 1, 1, 2], corrupt_key=3)
    ds = RecordDataset(tmp_path)
    with pytest.raises(DataError) as err:
        ds[2]
    assert str(err.value).startswith(f"{tmp_path / 'train.rec'} (key 3): ")
    skip = RecordDataset(tmp_path, on_error="skip")
    item = skip[2]
    assert isinstance(item, Skipped) and item.index == 2 and "key 3" in item.message
    images, labels, messages = collate_skipping([skip[i] for i in range(4)])
    assert images.shape == (3, 8, 8, 3) and labels.tolist() == [0, 1, 2]
    assert len(messages) == 1 and "train.rec (key 3)" in messages[0]


def test_record_dataset_missing_idx(tmp_path):
    (tmp_path / "train.rec").write_bytes(b"")
    with pytest.raises(DataError, match=r"train\.idx: index file \(\.idx\) not found"):
        RecordDataset(tmp_path)


# --------------------------------------------------------------------------- ImageFolder

def _tree(root, spec):
    """spec: {identity: {filename: array or bytes}}"""
    for ident, files in spec.items():
        (root / ident).mkdir(parents=True)
        for name, content in files.items():
            path = root / ident / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                Image.fromarray(content).save(path)
    return root


def test_image_folder_grey_colour_and_labels(tmp_path):
    grey = np.full((6, 6), 77, dtype=np.uint8)
    colour = _solid(100, (6, 6))
    root = _tree(tmp_path / "faces", {"bob": {"b.png": colour, "a.png": grey},
                                      "alice": {"x.png": colour, "notes.txt": b"hi"}})
    ds = ImageFolderDataset(root)
    assert ds.classes == ["alice", "bob"] and ds.num_classes == 2
    assert [(p.split("/")[-1], lab) for p, lab in ds.samples] == \
        [("x.png", 0), ("a.png", 1), ("b.png", 1)]
    assert ds.labels.tolist() == [0, 1, 1]
    img, label = ds[1]
    assert label == 1 and img.shape == (6, 6, 3) and (img == 77).all()
    assert ds[0][0][0, 0].tolist() == [100, 101, 102]
    bgr = ImageFolderDataset(root, color="bgr")
    assert bgr[0][0][0, 0].tolist() == [102, 101, 100]
    with pytest.raises(DataError, match=r"image is 6x6, expected 8x8"):
        ImageFolderDataset(root, expect_size=(8, 8))[0]


def test_image_folder_corrupt_jpeg_raise_and_skip(tmp_path):
    good = encode_image(_solid(50), "jpeg")
    root = _tree(tmp_path / "f", {"a": {"1.jpg": good, "2.jpg": good[: len(good) // 3]},
                                  "b": {"1.jpg": good}})
    with pytest.raises(DataError) as err:
        ImageFolderDataset(root)[1]
    assert str(err.value).startswith(str(root / "a" / "2.jpg") + ": ")
    ds = ImageFolderDataset(root, on_error="skip")
    batch = [ds[i] for i in range(3)]
    images, labels, messages = collate_skipping(batch)
    assert labels.tolist() == [0, 1] and images.shape[0] == 2
    assert len(messages) == 1 and str(root / "a" / "2.jpg") in messages[0]
    assert collate_skipping([batch[1]]) == (None, None, messages)


def test_image_folder_scan_errors(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        ImageFolderDataset(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="no identity folders"):
        ImageFolderDataset(tmp_path / "flat")
    root = _tree(tmp_path / "r", {"a": {"1.png": _solid(1)}, "empty": {}})
    with pytest.raises(DataError) as err:
        ImageFolderDataset(root)
    assert str(err.value).startswith(str(root / "empty") + ": identity folder has no images")
    ds = ImageFolderDataset(root, on_error="skip")
    assert ds.classes == ["a"] and len(ds.scan_skipped) == 1 \
        and str(root / "empty") in ds.scan_skipped[0]


# --------------------------------------------------------------------------- PairedDataset

def test_paired_dataset(tmp_path):
    hr = _tree(tmp_path / "hr", {"a": {"1.png": _solid(1, (16, 16))},
                                 "b": {"1.png": _solid(2, (16, 16)), "2.png": _solid(3, (16, 16))}})
    lr = _tree(tmp_path / "lr", {"a": {"1.png": _solid(1, (4, 4))},
                                 "b": {"1.png": _solid(2, (4, 4)), "2.png": _solid(3, (4, 4))}})
    pairs = PairedDataset(ImageFolderDataset(hr), ImageFolderDataset(lr))
    h, low, label = pairs[2]
    assert h.shape == (16, 16, 3) and low.shape == (4, 4, 3) and label == 1
    assert h[0, 0, 0] == low[0, 0, 0] == 3
    hr_b, lr_b, labels, msgs = collate_skipping([pairs[i] for i in range(3)])
    assert hr_b.shape == (3, 16, 16, 3) and lr_b.shape == (3, 4, 4, 3) and msgs == []
    assert labels.tolist() == [0, 1, 1]


def test_paired_dataset_label_mismatch(tmp_path):
    hr = _tree(tmp_path / "hr", {"a": {"1.png": _solid(1)}, "b": {"1.png": _solid(2),
                                                                   "2.png": _solid(3)}})
    lr = _tree(tmp_path / "lr", {"a": {"1.png": _solid(1), "2.png": _solid(2)},
                                 "b": {"1.png": _solid(3)}})
    with pytest.raises(DataError) as err:
        PairedDataset(ImageFolderDataset(hr), ImageFolderDataset(lr))
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'lr'} (sample 1): HR label 1 but LR label 0")
    short = _tree(tmp_path / "short", {"a": {"1.png": _solid(1)}})
    with pytest.raises(DataError, match="differ in size: 3 vs 1"):
        PairedDataset(ImageFolderDataset(hr), ImageFolderDataset(short))


def test_paired_dataset_skip_propagates(tmp_path):
    good = encode_image(_solid(5), "png")
    hr = _tree(tmp_path / "hr", {"a": {"1.png": good, "2.png": good}})
    lr = _tree(tmp_path / "lr", {"a": {"1.png": good, "2.png": b"broken"}})
    pairs = PairedDataset(ImageFolderDataset(hr, on_error="skip"),
                          ImageFolderDataset(lr, on_error="skip"))
    item = pairs[1]
    assert isinstance(item, Skipped) and item.arity == 3 and "2.png" in item.message
    assert collate_skipping([item]) == (None, None, None, [item.message])


def test_worker_error_is_one_clean_line(tmp_path):
    """A corrupt image read inside a DataLoader worker surfaces as a DataError with the
    original one-line message (no worker traceback soup)."""
    import torch
    from ranface.errors import DataError
    from ranface.data.datasets import ImageFolderDataset, collate_skipping

    d = tmp_path / "ds" / "id0"
    d.mkdir(parents=True)
    (d / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    ds = ImageFolderDataset(str(tmp_path / "ds"))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate_skipping)
    with pytest.raises(DataError) as ei:
        next(iter(loader))
    msg = str(ei.value)
    assert "\n" not in msg and "bad.jpg" in msg and "Traceback" not in msg
