"""`ranface prepare` on real LFW photos: aligned output, manifest, failures, LR selection,
resume, hostile list files."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import require_shared
from ranface.cli import main

PEOPLE = ("Aaron_Peirsol", "Abdullah_Gul")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    lfw = require_shared("lfw-gray", "images")
    root = tmp_path_factory.mktemp("photos")
    for name in PEOPLE:
        os.makedirs(root / name)
        for f in sorted(os.listdir(os.path.join(lfw, name)))[:3]:
            shutil.copy(os.path.join(lfw, name, f), root / name / f)
    (root / PEOPLE[0] / "broken.jpg").write_bytes(b"\xff\xd8\xffnot really a jpeg")
    return str(root)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_prepare_aligns_and_reports(photos, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["prepare", photos, "--out", out, "--set", "workers=1", "--set", "progress=false"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["photos"] == 7 and summary["faces_written"] == 6 and summary["failures"] == 1
    fails = _rows(os.path.join(out, "failures.csv"))
    assert fails[0]["source"].endswith("broken.jpg") and "image" in fails[0]["reason"]
    rows = _rows(os.path.join(out, "manifest.csv"))
    assert len(rows) == 6
    for r in rows:
        img = np.asarray(Image.open(os.path.join(out, r["output"])))
        assert img.shape == (112, 112, 3)
        assert 30 < float(r["eye_mouth_px"]) < 70  # LFW 250x250 photos
        assert float(r["leye_x"]) < float(r["reye_x"])
    # rerun: every chunk reused, identical manifest
    assert main(["prepare", photos, "--out", out, "--set", "workers=1", "--set", "progress=false"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["chunks_reused"] >= 1 and _rows(os.path.join(out, "manifest.csv")) == rows


def test_lr_select_band(photos, tmp_path, capsys):
    out = str(tmp_path / "lr")
    assert main(["prepare", photos, "--out", out, "--lr-select", "10:30", "--set", "workers=1",
                 "--set", "progress=false"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["faces_written"] == 0 and summary["filtered_out"] == 6
    out2 = str(tmp_path / "lr2")
    assert main(["prepare", photos, "--out", out2, "--lr-select", "40:60", "--set", "workers=1",
                 "--set", "progress=false"]) == 0
    rows = _rows(os.path.join(out2, "manifest.csv"))
    assert rows and all(40 <= float(r["eye_mouth_px"]) <= 60 for r in rows)


def test_resume_after_partial_run(photos, tmp_path, capsys):
    out = str(tmp_path / "res")
    args = ["prepare", photos, "--out", out, "--set", "workers=1", "--set", "progress=false",
            "--set", "chunk_size=2"]
    assert main(args) == 0
    first = _rows(os.path.join(out, "manifest.csv"))
    capsys.readouterr()
    # simulate a kill: one chunk's record and its faces gone, merged outputs gone
    os.unlink(os.path.join(out, ".parts", "chunk-000001.json"))
    os.unlink(os.path.join(out, "manifest.csv"))
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["chunks_reused"] == 3
    assert _rows(os.path.join(out, "manifest.csv")) == first
    assert not [f for _, _, fs in os.walk(out) for f in fs if f.endswith(".tmp")]


def test_rec_output(photos, tmp_path, capsys):
    out = str(tmp_path / "rec")
    assert main(["prepare", photos, "--out", out, "--format", "rec", "--set", "workers=2",
                 "--set", "progress=false"]) == 0
    from ranface.data.datasets import RecordDataset

    ds = RecordDataset(out)
    assert len(ds) == 6 and sorted(set(ds.labels)) == [0, 1]


def test_list_file_escaping_root_refused(photos, tmp_path, capsys):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{PEOPLE[0]}/{sorted(os.listdir(os.path.join(photos, PEOPLE[0])))[0]}\n../../etc/passwd\n")
    rc = main(["prepare", str(lst), "--out", str(tmp_path / "o"), "--set", f"root={photos}"])
    err = capsys.readouterr().err
    assert rc == 2 and "escapes" in err and "line 2" in err


def test_empty_input(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no photos" in capsys.readouterr().err


def test_prepared_eye_mouth_reads_the_manifest(tmp_path):
    from ranface.align.prepare import prepared_eye_mouth
    from ranface.errors import DataError

    assert prepared_eye_mouth(str(tmp_path)) == []
    (tmp_path / "manifest.csv").write_text("file,eye_mouth_px\na.jpg,12.50\nb.jpg,\nc.jpg,29.98\n")
    assert prepared_eye_mouth(str(tmp_path)) == [12.5, 29.98]
    (tmp_path / "manifest.csv").write_text("file,eye_mouth_px\na.jpg,twelve\n")
    with pytest.raises(DataError, match="manifest.csv: unreadable manifest"):
        prepared_eye_mouth(str(tmp_path))


@pytest.mark.parametrize("tune", [True, False])
def test_spawned_worker_follows_the_parents_allocator(tune):
    """A spawned prepare worker starts with glibc's defaults: it applies ranface's
    allocator thresholds when its parent runs with them (the CLI does), and only then."""
    import platform
    import subprocess
    import sys

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the allocator thresholds are glibc's")
    code = ("import dataclasses; from ranface.config import PrepareConfig; "
            "from ranface.align.prepare import _init_worker; "
            "from ranface.runtime import allocator_state; "
            f"_init_worker(dataclasses.asdict(PrepareConfig()), {tune}); print(allocator_state())")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", "RANFACE_ALLOCATOR"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == ("tuned" if tune else "system: not tuned")
