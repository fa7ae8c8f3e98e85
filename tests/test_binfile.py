"""Verification .bin files: round trip, Python 2 pickles, and refusal of unsafe pickles."""
from __future__ import annotations

import os
import pickle
import re
import struct

import numpy as np
import pytest

from ranface.data.binfile import load_bin, read_bin, write_bin
from ranface.data.image import encode_image
from ranface.errors import DataError, UnsafePickleError


def _faces(n: int, size=(112, 112)) -> list:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def _dump(path, obj, protocol=4):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


def test_write_load_round_trip_png_exact(tmp_path):
    faces = _faces(4)
    path = tmp_path / "lfw.bin"
    write_bin(path, [encode_image(f, "png") for f in faces], [True, False])
    images, issame = load_bin(path)
    assert images.shape == (4, 112, 112, 3) and images.dtype == np.uint8
    assert np.array_equal(images, np.stack(faces))
    assert issame.dtype == bool and issame.tolist() == [True, False]
    bgr, _ = load_bin(path, color="bgr")
    assert np.array_equal(bgr, images[..., ::-1])


def test_python2_style_pickle_with_binstrings(tmp_path):
    # Protocol 2 opcodes as Python 2 wrote them: str as SHORT_BINSTRING / BINSTRING,
    # bools as NEWTRUE / NEWFALSE. Read with encoding='bytes' they become bytes.
    png = encode_image(_faces(1, (8, 8))[0], "png")
    small = b"x" * 10

    def binstring(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else \
            (b"T" + struct.pack("<i", len(b)) + b)

    images = b"](" + binstring(png) + binstring(png) + binstring(small) + binstring(png) + b"e"
    data = b"\x80\x02" + images + b"](\x88\x89e" + b"\x86."
    (tmp_path / "py2.bin").write_bytes(data)
    encoded, issame = read_bin(tmp_path / "py2.bin")
    assert encoded[0] == png and encoded[2] == small and issame.tolist() == [True, False]
    with pytest.raises(DataError) as err:
        load_bin(tmp_path / "py2.bin", image_size=(8, 8))
    assert f"{tmp_path / 'py2.bin'} (image 2)" in str(err.value)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_bool_issame_accepted(tmp_path, protocol):
    png = encode_image(_faces(1, (4, 4))[0], "png")
    path = tmp_path / "b.bin"
    _dump(path, ([png] * 6, np.array([True, False, True])), protocol)
    images, issame = load_bin(path, image_size=(4, 4))
    assert images.shape == (6, 4, 4, 3) and issame.tolist() == [True, False, True]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("array", [np.array([1.0, 0.0]), np.array([1, 0], dtype=object),
                                   np.array([1, 0], dtype=np.uint8)])
def test_numpy_non_bool_array_refused(tmp_path, protocol, array):
    path = tmp_path / "f.bin"
    _dump(path, ([b"a", b"b", b"c", b"d"], array), protocol)
    with pytest.raises(UnsafePickleError) as err:
        read_bin(path)
    assert str(path) in str(err.value) and f"dtype {array.dtype}" in str(err.value)


class _RunsSystem:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class _OpensFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return open, (str(self.target), "w")


class _Execs:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return exec, (f"open({str(self.target)!r}, 'w').close()",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("payload,global_name", [(_RunsSystem, r"(posix|nt|os)\.system"),
                                                 (_OpensFile, r"io\.open"),
                                                 (_Execs, r"__builtins?__\.exec|builtins\.exec")])
def test_malicious_pickle_refused_and_nothing_runs(tmp_path, protocol, payload, global_name):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    _dump(path, ([b"a", payload(target)], [True]), protocol)
    with pytest.raises(UnsafePickleError) as err:
        load_bin(path)
    assert not target.exists()
    msg = str(err.value)
    assert msg.startswith(f"{path}: refused global ") and re.search(global_name, msg)


def test_foreign_types_refused_even_without_globals(tmp_path):
    path = tmp_path / "d.bin"
    _dump(path, ([b"a", b"b"], [{"x": 1}]))
    with pytest.raises(UnsafePickleError, match=r"a dict at top level\[1\]\[0\] is not "
                                                r"allowed"):
        read_bin(path)
    _dump(path, ([b"a", b"b"], [0.5]))
    with pytest.raises(UnsafePickleError, match="a float at"):
        read_bin(path)


def test_structure_errors(tmp_path):
    path = tmp_path / "s.bin"
    _dump(path, ([b"a", b"b", b"c"], [True]))
    with pytest.raises(DataError, match="3 images but 1 pairs"):
        read_bin(path)
    _dump(path, ([b"a", "b"], [True]))
    with pytest.raises(DataError, match=r"\(image 1\): expected encoded image bytes, got str"):
        read_bin(path)
    _dump(path, ([b"a", b"b"], ["yes"]))
    with pytest.raises(DataError, match=r"\(pair 0\): issame value 'yes' is not a bool"):
        read_bin(path)
    _dump(path, (b"a", b"b", [True]))
    with pytest.raises(DataError, match="expected a pickled \\(images, issame\\) pair"):
        read_bin(path)
    good = pickle.dumps(([b"a", b"b"], [True]), protocol=4)
    path.write_bytes(good[:-5])
    with pytest.raises(DataError, match="not a readable verification .bin pickle"):
        read_bin(path)
    with pytest.raises(DataError, match="cannot read file"):
        read_bin(tmp_path / "none.bin")


def test_corrupt_image_names_file_and_index(tmp_path):
    png = encode_image(_faces(1, (4, 4))[0], "png")
    path = tmp_path / "c.bin"
    write_bin(path, [png, png, png, png[:30]], [True, True])
    with pytest.raises(DataError) as err:
        load_bin(path, image_size=(4, 4))
    assert str(err.value).startswith(f"{path} (image 3): ")
    with pytest.raises(DataError, match=r"\(image 0\): image is 4x4, expected 112x112"):
        load_bin(path)
