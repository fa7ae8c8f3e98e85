"""Fuzzed parsers (hardening, issue 7): every reader of an input file, fed valid files
with random truncations, bit flips, overwritten / inserted / deleted bytes and huge
length words, lets only ranface's documented errors (``RanfaceError`` subclasses) escape,
each one line naming the file. Hangs are caught by pytest-timeout; memory blow-ups by
crafted 2^31 length fields run in a child process under an address-space limit.

A new parser is one more entry in :data:`PARSERS`: a function writing a valid case into
a folder (returning the files that may be mutated) and a function parsing that folder.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import warnings
from typing import Callable, Dict, List, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranface.errors import RanfaceError

# RANFACE_FUZZ_SCALE=20 runs 20x the examples with fresh randomness (a longer local hunt);
# the default is derandomized so CI is reproducible.
SCALE = float(os.environ.get("RANFACE_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    derandomize="RANFACE_FUZZ_SCALE" not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------- mutations

HUGE_WORDS = [struct.pack("<I", 2**31), struct.pack("<I", 2**32 - 1), struct.pack("<I", 2**31 - 1),
              struct.pack(">I", 2**31), struct.pack("<Q", 2**63 - 1)]

OPS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("overwrite"), st.floats(0, 1), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("huge"), st.floats(0, 1), st.sampled_from(HUGE_WORDS)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.floats(0, 1), st.integers(1, 16)),
)
MUTATIONS = st.lists(OPS, min_size=1, max_size=4)


def mutate(data: bytes, ops) -> bytes:
    """Apply mutation ops (positions are fractions of the current length)."""
    b = bytearray(data)
    for op in ops:
        pos = int(op[1] * len(b)) if b else 0
        pos = min(pos, max(len(b) - 1, 0))
        if op[0] == "truncate":
            del b[int(op[1] * len(b)):]
        elif op[0] == "flip" and b:
            b[pos] ^= 1 << op[2]
        elif op[0] in ("overwrite", "huge") and b:
            pos -= pos % 4 if op[0] == "huge" else 0  # length words sit at aligned offsets
            b[pos:pos + len(op[2])] = op[2]
        elif op[0] == "insert":
            b[pos:pos] = op[2]
        elif op[0] == "delete":
            del b[pos:pos + op[2]]
    return bytes(b)


# ---------------------------------------------------------------------------- cases


def _tiny_png(seed: int, size: int = 8) -> bytes:
    from ranface.data.image import encode_image

    rng = np.random.default_rng(seed)
    return encode_image((rng.random((size, size, 3)) * 255).astype(np.uint8), "png")


def make_rec(d: str) -> List[str]:
    from ranface.data.recordio import write_insightface_rec

    write_insightface_rec(d, ((_tiny_png(i), i // 2) for i in range(6)))
    return ["train.rec", "train.idx"]


def parse_rec(d: str) -> None:
    from ranface.data.datasets import RecordDataset
    from ranface.data.recordio import RecordReader

    with RecordReader(os.path.join(d, "train.rec")) as r:  # sequential scan, no index
        while r.read() is not None:
            pass
    ds = RecordDataset(d)
    for i in range(len(ds)):
        ds[i]


def make_bin(d: str) -> List[str]:
    from ranface.data.binfile import write_bin

    write_bin(os.path.join(d, "lfw.bin"), [_tiny_png(i) for i in range(4)], [True, False])
    return ["lfw.bin"]


def parse_bin(d: str) -> None:
    from ranface.data.binfile import load_bin

    load_bin(os.path.join(d, "lfw.bin"), image_size=None)


PAIRS = "2 1\nAnn 1 2\nAnn 1 Bob 3\nCid 2 4\nCid 1 Dee 1\n"


def make_pairs(d: str) -> List[str]:
    with open(os.path.join(d, "pairs.txt"), "w") as fh:
        fh.write(PAIRS)
    return ["pairs.txt"]


def parse_pairs_file(d: str) -> None:
    from ranface.eval.protocols.pairs import parse_pairs

    parse_pairs(os.path.join(d, "pairs.txt"))


IJB = {
    "ijbc_face_tid_mid.txt": "1.jpg 1 10\n2.jpg 1 11\n3.jpg 2 12\n",
    "ijbc_template_pair_label.txt": "1 2 0\n1 1 1\n2 2 1\n",
    "ijbc_name_5pts_score.txt": "".join(
        f"{i}.jpg 30.5 40.1 60.2 40.3 45.0 55.5 33.0 70.2 58.1 70.0 0.99\n" for i in (1, 2, 3)),
}


def make_ijb(d: str) -> List[str]:
    os.makedirs(os.path.join(d, "meta"))
    for name, text in IJB.items():
        with open(os.path.join(d, "meta", name), "w") as fh:
            fh.write(text)
    return [os.path.join("meta", n) for n in IJB]


def parse_ijb(d: str) -> None:
    from ranface.eval.protocols.ijbc import IjbcOptions, read_ijb_meta

    read_ijb_meta(d, IjbcOptions())


COVARIATE = {
    "ijbc_11_covariate_probe_reference.csv":
        "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID,FACE_X,FACE_Y,FACE_WIDTH,FACE_HEIGHT\n"
        "101,10,img/1.jpg,5101,10,12,40,40\n102,10,frames/2_1.png,5102,3,4,20,22\n"
        "103,20,img/3.jpg,5103,,,,\n",
    "ijbc_11_covariate_matches.csv": "101,102\n101,103\n102,103\n",
    "scface_split.txt": "# split\nfinetune 001\ntest 002\ntest 003\n",
}


def make_covariate(d: str) -> List[str]:
    for name, text in COVARIATE.items():
        with open(os.path.join(d, name), "w") as fh:
            fh.write(text)
    return list(COVARIATE)


def parse_covariate(d: str) -> None:
    from ranface.eval.protocols.ijbc_tiny import read_covariate_matches, read_covariate_reference
    from ranface.eval.protocols.scface import read_split

    read_covariate_reference(os.path.join(d, "ijbc_11_covariate_probe_reference.csv"))
    read_covariate_matches(os.path.join(d, "ijbc_11_covariate_matches.csv"))
    read_split(os.path.join(d, "scface_split.txt"))


def make_tinyface_mat(d: str) -> List[str]:
    import scipy.io

    names = np.array([["1_1.jpg"], ["1_2.jpg"], ["22_1.jpg"]], dtype=object)
    scipy.io.savemat(os.path.join(d, "probe_img_ID_pairs.mat"),
                     {"probe_set": names, "probe_ids": np.array([[1], [1], [22]])})
    return ["probe_img_ID_pairs.mat"]


def parse_tinyface_mat(d: str) -> None:
    from ranface.eval.features import SkipLog
    from ranface.eval.protocols.tinyface import _listed

    _listed(d, "Probe", "probe_img_ID_pairs.mat", "probe_set", "probe_ids", SkipLog("skip"))


def make_survface_mat(d: str) -> List[str]:
    import scipy.io

    cells = np.empty((2, 2), dtype=object)
    cells[:] = [["a_1.jpg", "a_2.jpg"], ["b_1.jpg", "c_9.jpg"]]
    scipy.io.savemat(os.path.join(d, "positive_pairs_names.mat"), {"positive_pairs_names": cells},
                     do_compression=True)
    return ["positive_pairs_names.mat"]


def parse_survface_mat(d: str) -> None:
    from ranface.eval.protocols.common import load_mat, mat_string_pairs

    p = os.path.join(d, "positive_pairs_names.mat")
    mat_string_pairs(load_mat(p), "positive_pairs_names", p)


CONFIG = """\
stage: hr
data:
  train: /data/faces
  batch_size: 16
  hflip: true
model:
  backbone: mobilefacenet
  margin: 0.5
optim:
  lr: 0.05
  milestones: [10, 20]
run:
  out_dir: runs
  ckpt_every: 20
  inject_nonfinite: []
"""


def make_yaml(d: str) -> List[str]:
    with open(os.path.join(d, "train.yaml"), "w") as fh:
        fh.write(CONFIG)
    return ["train.yaml"]


def parse_yaml(d: str) -> None:
    from ranface.config import TrainConfig, load_config

    load_config(TrainConfig, os.path.join(d, "train.yaml"))


def _make_image(fmt: str, ext: str) -> Callable[[str], List[str]]:
    def make(d: str) -> List[str]:
        from ranface.data.image import encode_image

        rng = np.random.default_rng(0)
        arr = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        with open(os.path.join(d, f"face.{ext}"), "wb") as fh:
            fh.write(encode_image(arr, fmt))
        return [f"face.{ext}"]

    return make


def _parse_image(ext: str) -> Callable[[str], None]:
    def parse(d: str) -> None:
        from ranface.data.image import read_image

        read_image(os.path.join(d, f"face.{ext}"))

    return parse


class Case(NamedTuple):
    make: Callable[[str], List[str]]
    parse: Callable[[str], None]
    examples: int = 100  # fuzz examples (the .mat readers parse each file in a child first)


PARSERS: Dict[str, Case] = {
    "rec": Case(make_rec, parse_rec),
    "bin": Case(make_bin, parse_bin),
    "pairs.txt": Case(make_pairs, parse_pairs_file),
    "ijbc-meta": Case(make_ijb, parse_ijb),
    "ijbc-covariate+scface-split": Case(make_covariate, parse_covariate),
    "tinyface-mat": Case(make_tinyface_mat, parse_tinyface_mat, 15),
    "survface-mat": Case(make_survface_mat, parse_survface_mat, 15),
    "yaml-config": Case(make_yaml, parse_yaml),
    "image-png": Case(_make_image("png", "png"), _parse_image("png")),
    "image-jpeg": Case(_make_image("jpeg", "jpg"), _parse_image("jpg")),
}


class Seeds:
    """One valid case per parser (the bytes of each file), made on first use and checked
    to parse cleanly. (Not a fixture argument of the fuzz test: hypothesis would print
    every file's bytes with each failing example.)"""

    def __init__(self, root: str):
        self.root = root
        self.cases: Dict[str, Dict[str, bytes]] = {}

    def __getitem__(self, name: str) -> Dict[str, bytes]:
        if name not in self.cases:
            d = tempfile.mkdtemp(prefix=name.replace(".", "_"), dir=self.root)
            files = PARSERS[name].make(d)
            PARSERS[name].parse(d)  # the unmutated case is valid
            self.cases[name] = {f: open(os.path.join(d, f), "rb").read() for f in files}
        return self.cases[name]


SEEDS: Dict[str, Seeds] = {}


@pytest.fixture(scope="module", autouse=True)
def seed_dir(tmp_path_factory):
    SEEDS["all"] = Seeds(str(tmp_path_factory.mktemp("seeds")))
    yield
    SEEDS.clear()


def write_case(d: str, files: Dict[str, bytes], target: str, content: bytes) -> None:
    for f, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(d, f)), exist_ok=True)
        with open(os.path.join(d, f), "wb") as fh:
            fh.write(content if f == target else data)


def check_parse(case: Case, d: str) -> None:
    """Parse; success or a one-line RanfaceError naming a file of the case are fine."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            case.parse(d)
        except RanfaceError as exc:
            msg = str(exc)
            assert d in msg, f"error does not name the file: {msg!r}"
            assert "\n" not in msg.strip(), f"error is not one line: {msg!r}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", sorted(PARSERS))
def test_mutated_file_gives_only_ranface_errors(name):
    seeds = SEEDS["all"]
    files = seeds[name]

    @fuzz_settings(PARSERS[name].examples)
    @given(which=st.integers(0, 2), ops=MUTATIONS)
    def one(which, ops):
        target = sorted(files)[which % len(files)]
        with tempfile.TemporaryDirectory(dir=seeds.root) as d:
            write_case(d, files, target, mutate(files[target], ops))
            check_parse(PARSERS[name], d)

    one()


WRONG_TYPES = [
    b"", b"\x00" * 64, b"\xff" * 64, b"null\n", b"[1, 2, 3]\n", b"- a\n- b\n", b"{}",
    "\u00e9\u4e2d\n".encode("utf-8"), b"\x80\x04\x95\x00", b"PK\x03\x04" + b"\x00" * 30,
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0" + b"\x00" * 20, b"MATLAB 5.0 MAT-file" + b"\x00" * 120,
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(PARSERS))
def test_wrong_file_types(name, tmp_path):
    """Every file of a case replaced in turn by the content of a different kind of file."""
    files = SEEDS["all"][name]
    for target in files:
        for k, junk in enumerate(WRONG_TYPES):
            d = str(tmp_path / f"{os.path.basename(target)}-{k}")
            write_case(d, files, target, junk)
            check_parse(PARSERS[name], d)


# ---------------------------------------------------------------------------- specific bugs


def test_config_with_non_string_keys_and_non_finite_numbers(tmp_path):
    from ranface.config import TrainConfig, load_config
    from ranface.errors import ConfigError

    for k, text in enumerate(["1: 2\n", "null: 3\n", "run:\n  7: x\n", "optim:\n  max_steps: .nan\n",
                              "optim:\n  max_steps: .inf\n", "run:\n  seed: -.inf\n",
                              "run: !!python/object/apply:os.system ['true']\n",
                              "data: " + "[" * 5000 + "]" * 5000 + "\n"]):
        p = tmp_path / f"c{k}.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError) as ei:
            load_config(TrainConfig, str(p))
        assert str(p) in str(ei.value)


def test_ijb_ids_beyond_int64(tmp_path):
    from ranface.errors import ProtocolError

    make_ijb(str(tmp_path))
    (tmp_path / "meta" / "ijbc_template_pair_label.txt").write_text("1 2 0\n1 99999999999999999999 1\n")
    with pytest.raises(ProtocolError, match=r"ijbc_template_pair_label.txt \(line 2\)"):
        parse_ijb(str(tmp_path))
    make_ijb(str(tmp_path / "b"))
    (tmp_path / "b" / "meta" / "ijbc_face_tid_mid.txt").write_text("1.jpg -99999999999999999999 1\n")
    with pytest.raises(ProtocolError, match=r"ijbc_face_tid_mid.txt \(line 1\)"):
        parse_ijb(str(tmp_path / "b"))


# ---------------------------------------------------------------------------- memory

MEMORY_SCRIPT = r"""
import json, os, resource, struct, sys, zlib
LIMIT = 1 << 30
resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))  # a 2 GiB allocation must fail loudly
import numpy as np
from ranface.errors import RanfaceError
from ranface.data.image import decode_image, encode_image
from ranface.data.recordio import (IRHeader, RecordReader, frame_record, pack,
                                   read_insightface_index)
from ranface.data.binfile import load_bin
from ranface.eval.protocols.common import load_mat, mat_strings

d = sys.argv[1]
results = {}
small = encode_image(np.zeros((8, 8, 3), np.uint8), "png")


def rec(name, records):
    with open(f"{d}/{name}.rec", "wb") as r, open(f"{d}/{name}.idx", "w") as ix:
        off = 0
        for key, data in records:
            f = frame_record(data)
            r.write(f)
            ix.write(f"{key}\t{off}\n")
            off += len(f)
    return RecordReader(f"{d}/{name}.rec", f"{d}/{name}.idx")


def case(name, fn):
    try:
        fn()
        results[name] = "parsed"
    except RanfaceError as exc:
        results[name] = "RanfaceError: " + str(exc)
    except BaseException as exc:
        results[name] = f"ESCAPED {type(exc).__name__}: {str(exc)[:200]}"


# .rec: identity range end key 2^31 in header record 0 (would be a 16 GiB key array)
case("rec-header-end-2^31", lambda: read_insightface_index(rec("h", [
    (1, pack(IRHeader(0, 0.0, 1, 0), small)), (2, pack(IRHeader(0, 0.0, 2, 0), small)),
    (0, pack(IRHeader(0, [3.0, float(2 ** 31)], 0, 0), b""))])))
# .rec: image-record header announcing 2^31 float labels
case("rec-irheader-flag-2^31", lambda: read_insightface_index(rec("f", [
    (1, struct.pack("<IfQQ", 2 ** 31, 0.0, 1, 0) + small)])))


def frame_len(word):
    with open(f"{d}/l.rec", "wb") as fh:
        fh.write(struct.pack("<II", 0xCED7230A, word) + b"\0" * 64)
    r = RecordReader(f"{d}/l.rec")
    while r.read() is not None:
        pass


def idx_offset(off):
    rec("o", [(1, pack(IRHeader(0, 0.0, 1, 0), small))])
    with open(f"{d}/o.idx", "w") as fh:
        fh.write(f"0\t0\n1\t{off}\n")
    RecordReader(f"{d}/o.rec", f"{d}/o.idx").read_idx(1)


case("idx-offset-2^31", lambda: idx_offset(2 ** 31))
case("rec-frame-length-2^29-1", lambda: frame_len(2 ** 29 - 1))
case("rec-frame-length-2^31", lambda: frame_len(2 ** 31))


def png(w, h):
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


def patched(fmt, offset_of, fields, values):
    b = bytearray(encode_image(np.zeros((8, 8, 3), np.uint8), fmt))
    struct.pack_into(fields, b, offset_of(b), *values)
    return bytes(b)


case("png-2^31x2^31", lambda: decode_image(png(2 ** 31 - 1, 2 ** 31 - 1), "x.png"))
case("png-65536x32768", lambda: decode_image(png(65536, 32768), "x.png"))
case("bmp-2^31x2^31", lambda: decode_image(patched("bmp", lambda b: 18, "<ii", (2 ** 31 - 1, 2 ** 31 - 1)), "x.bmp"))
case("jpeg-65500x65500", lambda: decode_image(patched("jpeg", lambda b: b.find(b"\xff\xc0") + 5, ">HH", (65500, 65500)), "x.jpg"))
case("gif-65535x65535", lambda: decode_image(patched("gif", lambda b: 6, "<HH", (65535, 65535)), "x.gif"))


def binfile(payload):
    with open(f"{d}/x.bin", "wb") as fh:
        fh.write(payload)
    load_bin(f"{d}/x.bin")


case("bin-binbytes-2^31", lambda: binfile(b"\x80\x04B" + struct.pack("<I", 2 ** 31) + b"abc"))
case("bin-binunicode8-2^40", lambda: binfile(b"\x80\x04\x8d" + struct.pack("<Q", 2 ** 40) + b"abc"))


def mat_len(word):
    import scipy.io
    scipy.io.savemat(f"{d}/m.mat", {"probe_set": np.array([["a_1.jpg"]], dtype=object)})
    b = bytearray(open(f"{d}/m.mat", "rb").read())
    struct.pack_into("<I", b, b.find(b"a_1.jpg") - 4, word)  # byte count of the name's chars
    open(f"{d}/m.mat", "wb").write(bytes(b))
    mat_strings(load_mat(f"{d}/m.mat"), "probe_set", f"{d}/m.mat")


case("mat-string-2^31", lambda: mat_len(2 ** 31))
case("mat-string-2^32-1", lambda: mat_len(2 ** 32 - 1))
# VmHWM: this process image's own peak RSS (ru_maxrss survives exec and would include the
# parent pytest's RSS at fork time)
with open("/proc/self/status") as fh:
    results["maxrss_mib"] = next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) / 1024
print(json.dumps(results))
"""


@pytest.mark.timeout(120)
def test_huge_length_fields_do_not_allocate(tmp_path):
    """Length / size fields of 2^31 (and more) in .rec, image, .bin and .mat headers: a
    clean error, and the child process's peak memory stays far below the allocation."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)], capture_output=True,
                       text=True, timeout=110, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    rss = res.pop("maxrss_mib")
    assert len(res) == 14
    escaped = {k: v for k, v in res.items() if not v.startswith("RanfaceError")}
    assert not escaped, escaped
    assert rss < 400, f"peak RSS {rss:.0f} MiB"


def test_mat_reader_crash_is_an_error(tmp_path):
    """One flipped bit (a cell's data type 16 -> 80) makes scipy 1.17's loadmat segfault;
    ranface parses .mat files in a child first, so it is a ProtocolError naming the file."""
    from ranface.errors import ProtocolError

    make_tinyface_mat(str(tmp_path))
    p = tmp_path / "probe_img_ID_pairs.mat"
    b = bytearray(p.read_bytes())
    assert b[368] == 16
    b[368] = 80
    p.write_bytes(bytes(b))
    with pytest.raises(ProtocolError, match="probe_img_ID_pairs.mat"):
        parse_tinyface_mat(str(tmp_path))
