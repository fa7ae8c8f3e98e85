"""RecordIO: files assembled here byte by byte from the format description, not by our
writer, so reader and writer cannot share a misreading of the format."""
from __future__ import annotations

import os
import pickle
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ranface.data.recordio import (IRHeader, RecordReader, RecordWriter, frame_record,
                                   pack, read_insightface_index, unpack,
                                   write_insightface_rec)
from ranface.errors import DataError

MAGIC = 0xCED7230A
M = struct.pack("<I", MAGIC)


def frame(payload: bytes, cflag: int = 0) -> bytes:
    """One frame as dmlc-core lays it out: magic, cflag<<29|len, payload, zero pad."""
    return struct.pack("<II", MAGIC, (cflag << 29) | len(payload)) + payload \
        + b"\0" * (-len(payload) % 4)


def header(flag: int, label: float, id_: int = 0, id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", flag, label, id_, id2)


def write_files(tmp_path, frames, keys=None, name="t"):
    """Write concatenated frames (a list of per-record byte strings) and an idx."""
    rec, idx = tmp_path / f"{name}.rec", tmp_path / f"{name}.idx"
    offsets, pos = [], 0
    for f in frames:
        offsets.append(pos)
        pos += len(f)
    rec.write_bytes(b"".join(frames))
    keys = list(range(len(frames))) if keys is None else keys
    idx.write_text("".join(f"{k}\t{o}\n" for k, o in zip(keys, offsets)))
    return rec, idx


# --------------------------------------------------------------------------- reading

def test_reads_hand_assembled_file_with_multipart_record(tmp_path):
    r0 = header(0, 3.0, 7) + b"img"                          # single frame, padded
    # A payload holding the magic word twice at aligned offsets is stored as three
    # frames (start, middle, end) with the magic words dropped.
    body = b"ABCD" + M + b"EFGH" + M + b"tail!"
    r1 = header(0, 5.0) + body
    cut1 = len(header(0, 5.0)) + 4
    parts = [r1[:cut1], r1[cut1 + 4:cut1 + 8], r1[cut1 + 12:]]
    multi = frame(parts[0], 1) + frame(parts[1], 2) + frame(parts[2], 3)
    r2 = header(2, 0.0) + struct.pack("<ff", 11.0, 12.0) + b"xy"
    rec, idx = write_files(tmp_path, [frame(r0), multi, frame(r2)], keys=[10, 20, 30])

    reader = RecordReader(rec, idx)
    assert reader.keys == [10, 20, 30] and len(reader) == 3
    assert reader.read_idx(20) == r1
    h, payload = unpack(reader.read_idx(20))
    assert (h.flag, h.label, payload) == (0, 5.0, body)
    h, payload = unpack(reader.read_idx(30))
    assert h.flag == 2 and h.label.tolist() == [11.0, 12.0] and payload == b"xy"
    h, payload = unpack(reader.read_idx(10))
    assert (h.label, h.id, payload) == (3.0, 7, b"img")
    # sequential reading sees the same three records, then the end
    assert [reader.read() for _ in range(4)] == [r0, r1, r2, None]
    reader.reset()
    assert reader.read() == r0
    assert reader.read_header(30).label.tolist() == [11.0, 12.0]


def test_writer_output_matches_dmlc_escaping_byte_for_byte(tmp_path):
    payload = M + b"abcd" + M + b"xyz" + M + b"q"  # aligned at 0 and 8; the one at 15 is not
    expected = frame(b"", 1) + frame(b"abcd", 2) + frame(b"xyz" + M + b"q", 3)
    assert frame_record(payload) == expected
    assert frame_record(b"abcd" + M) == frame(b"abcd", 1) + frame(b"", 3)
    assert frame_record(b"plain") == frame(b"plain")
    with RecordWriter(tmp_path / "w.rec", tmp_path / "w.idx") as w:
        w.write_idx(0, payload)
        w.write_idx(1, b"z")
    assert (tmp_path / "w.rec").read_bytes() == expected + frame(b"z")
    assert (tmp_path / "w.idx").read_text() == f"0\t0\n1\t{len(expected)}\n"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([b"", b"a", b"bc", b"def", b"ghij", M]),
                         max_size=8).map(b"".join), min_size=1, max_size=5))
def test_write_read_round_trip(tmp_path_factory, records):
    d = tmp_path_factory.mktemp("rt")
    with RecordWriter(d / "a.rec", d / "a.idx") as w:
        for k, r in enumerate(records):
            w.write_idx(100 - k, r)
    reader = RecordReader(d / "a.rec", d / "a.idx")
    assert [reader.read_idx(100 - k) for k in range(len(records))] == records
    assert [reader.read() for _ in records] == records and reader.read() is None


def test_pack_unpack_layout():
    rec = pack(IRHeader(0, 4.0, 9, 1), b"data")
    assert rec == header(0, 4.0, 9, 1) + b"data"
    rec = pack(IRHeader(0, [1, 2, 3], 5, 0), b"d")
    assert rec == header(3, 0.0, 5) + struct.pack("<fff", 1, 2, 3) + b"d"
    h, payload = unpack(rec)
    assert h.flag == 3 and h.label.dtype == np.float32 and h.label.tolist() == [1, 2, 3]
    with pytest.raises(DataError, match="shorter than the 24-byte"):
        unpack(b"short", "x.rec (key 3)")
    with pytest.raises(DataError, match="x.rec \\(key 3\\): header announces 5"):
        unpack(header(5, 0.0) + b"\0" * 8, "x.rec (key 3)")


# --------------------------------------------------------------------------- errors

def test_truncated_record_names_file_and_offset(tmp_path):
    good = frame(header(0, 1.0) + b"x" * 40)
    bad = frame(header(0, 2.0) + b"y" * 100)
    rec, idx = write_files(tmp_path, [good, bad])
    rec.write_bytes(rec.read_bytes()[:len(good) + 50])  # cut inside the second record
    reader = RecordReader(rec, idx)
    assert reader.read_idx(0) == header(0, 1.0) + b"x" * 40
    with pytest.raises(DataError) as err:
        reader.read_idx(1)
    msg = str(err.value)
    assert str(rec) in msg and f"offset {len(good)}" in msg and "truncated" in msg
    reader.reset()
    reader.read()
    with pytest.raises(DataError, match=f"offset {len(good)}"):
        reader.read()


def test_huge_length_word_is_rejected_before_reading(tmp_path):
    rec = tmp_path / "h.rec"
    rec.write_bytes(struct.pack("<II", MAGIC, (1 << 29) - 1) + b"\0" * 16)
    with pytest.raises(DataError, match=r"claims 536870911 bytes but only 16 remain"):
        RecordReader(rec).read()


def test_bad_magic_and_bad_continuation(tmp_path):
    rec, idx = write_files(tmp_path, [frame(b"abcd"), b"\x00\x11\x22\x33" + b"\0" * 8])
    reader = RecordReader(rec, idx)
    with pytest.raises(DataError, match=r"key 1, offset 12\): bad magic 0x33221100"):
        reader.read_idx(1)
    rec2, _ = write_files(tmp_path, [frame(b"abcd", 2)], name="c")
    with pytest.raises(DataError, match="starts with a continuation frame"):
        RecordReader(rec2).read()
    rec3, _ = write_files(tmp_path, [frame(b"abcd", 1) + frame(b"efgh", 0)], name="d")
    with pytest.raises(DataError, match="without its final frame"):
        RecordReader(rec3).read()


def test_idx_errors_name_file_and_line(tmp_path):
    rec, idx = write_files(tmp_path, [frame(b"abcd"), frame(b"efgh")])
    size = rec.stat().st_size
    idx.write_text(f"0\t0\n1\t{size}\n")
    with pytest.raises(DataError) as err:
        RecordReader(rec, idx)
    assert str(idx) in str(err.value) and "line 2" in str(err.value) \
        and f"offset {size} is past the end" in str(err.value)
    idx.write_text("0\t0\n\n1 12\n")
    with pytest.raises(DataError, match=r"\(line 3\): expected 'key<TAB>offset'"):
        RecordReader(rec, idx)
    idx.write_text("5\t0\n5\t12\n")
    with pytest.raises(DataError, match=r"\(line 2\): duplicate key 5 \(first on line 1\)"):
        RecordReader(rec, idx)
    with pytest.raises(DataError, match="cannot read index file"):
        RecordReader(rec, tmp_path / "missing.idx")


def test_missing_key(tmp_path):
    rec, idx = write_files(tmp_path, [frame(b"abcd")], keys=[3])
    reader = RecordReader(rec, idx)
    assert 3 in reader and 4 not in reader
    with pytest.raises(DataError, match=r"t\.idx \(key 4\): key not in the index"):
        reader.read_idx(4)


# --------------------------------------------------------------------------- processes

def test_pickle_drops_handle_and_reopens_after_pid_change(tmp_path):
    rec, idx = write_files(tmp_path, [frame(b"one!"), frame(b"two!")])
    reader = RecordReader(rec, idx)
    assert reader.read_idx(1) == b"two!"
    first_handle = reader._fh
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._fh is None and clone.read_idx(0) == b"one!"
    reader._pid = -1  # what a forked worker sees: a handle opened by another process
    assert reader.read_idx(0) == b"one!"
    assert reader._fh is not first_handle and reader._pid == os.getpid()


# --------------------------------------------------------------------------- writer

def test_writer_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with RecordWriter(tmp_path / "x.rec", tmp_path / "x.idx") as w:
            w.write_idx(0, b"abc")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_replaces_existing_output(tmp_path):
    for payload in (b"old", b"new!"):
        with RecordWriter(tmp_path / "x.rec", tmp_path / "x.idx") as w:
            w.write_idx(0, payload)
    assert RecordReader(tmp_path / "x.rec", tmp_path / "x.idx").read_idx(0) == b"new!"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.idx", "x.rec"]


# --------------------------------------------------------------------------- insightface

def test_insightface_layout_round_trip(tmp_path):
    samples = [(b"a0", 0), (b"a1", 0), (b"c0", 2), (b"c1", 2), (b"c2", 2), (b"d0", 3)]
    assert write_insightface_rec(tmp_path, iter(samples)) == (6, 4)
    reader = RecordReader(tmp_path / "train.rec", tmp_path / "train.idx")
    h0, _ = unpack(reader.read_idx(0))
    assert h0.flag == 2 and h0.label.tolist() == [7, 11]
    # identity records 7..10 hold each class's key range; class 1 is empty
    ranges = [unpack(reader.read_idx(k))[0].label.tolist() for k in range(7, 11)]
    assert ranges == [[1, 3], [3, 3], [3, 6], [6, 7]]
    h, payload = unpack(reader.read_idx(4))
    assert (h.flag, h.label, payload) == (0, 2.0, b"c1")
    keys, labels = read_insightface_index(reader)
    assert keys.tolist() == [1, 2, 3, 4, 5, 6]
    assert labels.tolist() == [0, 0, 2, 2, 2, 3]
    keys2, labels2 = read_insightface_index(reader, use_identity_records=False)
    assert keys2.tolist() == keys.tolist() and labels2.tolist() == labels.tolist()


def test_insightface_unsorted_labels_refused_and_nothing_written(tmp_path):
    with pytest.raises(DataError, match=r"\(sample 2\): samples must come grouped.*label 0 "
                                        r"after 1"):
        write_insightface_rec(tmp_path, [(b"a", 0), (b"b", 1), (b"c", 0)])
    assert list(tmp_path.iterdir()) == []


def test_insightface_labels_in_float_array_without_header_record(tmp_path):
    # Some datasets keep the class id in the label array (flag 1) and have no record 0.
    recs = [frame(header(1, 0.0, k) + struct.pack("<f", lab) + b"img")
            for k, lab in ((1, 4.0), (2, 4.0), (3, 1.0))]
    rec, idx = write_files(tmp_path, recs, keys=[1, 2, 3])
    keys, labels = read_insightface_index(RecordReader(rec, idx))
    assert keys.tolist() == [1, 2, 3] and labels.tolist() == [4, 4, 1]


def test_inconsistent_identity_records_fall_back_to_headers(tmp_path):
    # record 0 says images 1..2, identities 3..3; the identity says class 0 but the
    # image headers say 5
    recs = [frame(header(2, 0.0) + struct.pack("<ff", 3, 4)),
            frame(header(0, 5.0) + b"i1"), frame(header(0, 5.0) + b"i2"),
            frame(header(2, 0.0) + struct.pack("<ff", 1, 3))]
    rec, idx = write_files(tmp_path, recs)
    with pytest.warns(UserWarning, match="has label 5 but identity record says 0"):
        keys, labels = read_insightface_index(RecordReader(rec, idx))
    assert keys.tolist() == [1, 2] and labels.tolist() == [5, 5]


def test_non_integer_label_is_an_error(tmp_path):
    rec, idx = write_files(tmp_path, [frame(header(0, 2.5) + b"x")], keys=[1])
    with pytest.raises(DataError, match=r"\(key 1\): label 2.5 is not a non-negative"):
        read_insightface_index(RecordReader(rec, idx))


# Written by mxnet 1.9.1 (MXIndexedRecordIO.write_idx of recordio.pack records) during
# development; both records contain the magic word at an aligned offset.
_MXNET_REC = bytes.fromhex(
    "0a23d7ce1c000020000000000000004001000000000000000000000000000000616263640a23d7ce"
    "0300006078797a000a23d7ce200000200200000000000000020000000000000000000000000000"
    "0000004040000080400a23d7ce00000060")
_MXNET_IDX = "1\t0\n2\t48\n"


def test_matches_bytes_written_by_mxnet(tmp_path):
    records = [pack(IRHeader(0, 2.0, 1, 0), b"abcd" + M + b"xyz"),
               pack(IRHeader(0, [3.0, 4.0], 2, 0), M)]
    with RecordWriter(tmp_path / "o.rec", tmp_path / "o.idx") as w:
        for key, r in enumerate(records, start=1):
            w.write_idx(key, r)
    assert (tmp_path / "o.rec").read_bytes() == _MXNET_REC
    assert (tmp_path / "o.idx").read_text() == _MXNET_IDX
    (tmp_path / "m.rec").write_bytes(_MXNET_REC)
    (tmp_path / "m.idx").write_text(_MXNET_IDX)
    reader = RecordReader(tmp_path / "m.rec", tmp_path / "m.idx")
    assert [reader.read_idx(k) for k in (1, 2)] == records
