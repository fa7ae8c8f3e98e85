"""``identify``: real LFW faces pasted into a short synthetic video are found near where
they were pasted and named by the pretrained ResNet-29; small faces, empty frames and
bad videos are reported clearly."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from conftest import require_shared
from ranface.deploy.identify import FaceResult, FrameResult, align_detections, warp_local, write_results
from ranface.errors import DataError

PEOPLE = ("George_W_Bush", "Colin_Powell", "Tony_Blair")
FACE = 110  # side of the pasted face crop, px
# frame index -> [(person, top-left x, y)]; frame 2 has no face at all.
LAYOUT = {0: [("George_W_Bush", 10, 60), ("Colin_Powell", 230, 60)], 1: [("Tony_Blair", 120, 50)], 2: []}


def _lfw(person, k):
    return os.path.join(require_shared("lfw-gray", "images"), person, f"{person}_{k:04d}.jpg")


def _frames():
    from PIL import Image

    from ranface.data.image import read_image

    crops = {}
    for p in PEOPLE:
        img = read_image(_lfw(p, 2))[60:190, 60:190]  # the central face region of a 250x250 photo
        crops[p] = np.asarray(Image.fromarray(img).resize((FACE, FACE), Image.BICUBIC))
    frames = []
    for i in sorted(LAYOUT):
        f = np.full((240, 360, 3), 120, np.uint8)
        for p, x, y in LAYOUT[i]:
            f[y:y + FACE, x:x + FACE] = crops[p]
        frames.append(f)
    return frames


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("av")
    from ranface.api import FaceRecognizer
    from ranface.deploy.video import VideoWriter

    model = require_shared("models", "faceapi-resnet29")
    tmp = tmp_path_factory.mktemp("identify")
    rec = FaceRecognizer(model, device="cpu", upscales=(1.0,))
    gallery, report = rec.enrol({p: [_lfw(p, 1)] for p in PEOPLE})  # raw photos: detect + align
    assert report["identities"] == 3 and report["skipped"] == 0
    video = str(tmp / "clip.mp4")
    with VideoWriter(video, fps=5) as w:
        for f in _frames():
            w.write(f)
    return rec, gallery, video, tmp


def test_gallery_uses_the_cards_dlib_template_and_input_size(setup):
    rec, gallery, _, _ = setup
    # the model card: dlib template, aligned straight to the ResNet-29's 150x150 input
    assert rec.template == "dlib" and rec.face_size == (150, 150)
    assert gallery.embedding["template"] == "dlib" and gallery.dim == 128


def test_pasted_faces_are_found_and_named(setup):
    rec, gallery, video, tmp = setup
    ann = str(tmp / "annotated")
    frames = list(rec.identify(gallery, [video], k=3, threshold=0.5, annotate=ann))
    assert [f.frame for f in frames] == [0, 1, 2]
    assert (frames[0].width, frames[0].height) == (360, 240)
    for fr in frames:
        expected = LAYOUT[fr.frame]
        assert len(fr.faces) == len(expected), (fr.frame, [f.to_dict() for f in fr.faces])
        for person, x, y in expected:
            centre = np.array([x + FACE / 2, y + FACE / 2])
            near = [f for f in fr.faces
                    if np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre) < 20]
            assert len(near) == 1, (person, [f.box for f in fr.faces])
            face = near[0]
            assert face.status == "match" and face.identity == person
            assert face.top_k[0] == (person, face.score) and len(face.top_k) == 3
            assert 20 < face.eye_mouth_px < 60
    from ranface.deploy.video import iter_video_frames

    out = os.path.join(ann, "clip.annotated.mp4")
    assert [f.index for f in iter_video_frames(out)] == [0, 1, 2]

    # Result files: one CSV row per face, a no_face row for the empty frame.
    path = write_results(str(tmp / "r.csv"), frames, {})
    rows = list(csv.DictReader(open(path)))
    assert [r["status"] for r in rows] == ["match", "match", "match", "no_face"]
    assert {r["identity"] for r in rows[:3]} == set(PEOPLE)
    assert len(rows[0]["landmarks"].split()) == 10
    doc = json.load(open(write_results(str(tmp / "r.json"), frames, {"gallery": "g"})))
    assert doc["summary"] == {"frames": 3, "frames_without_faces": 1, "faces": 3, "match": 3,
                              "unknown": 0, "no_threshold": 0, "too_small": 0}


def test_every_nth_frame_and_small_face_floor(setup):
    rec, gallery, video, _ = setup
    from ranface.deploy.video import iter_video_frames

    assert [f.index for f in iter_video_frames(video, every=2)] == [0, 2]
    assert [f.index for f in iter_video_frames(video, every=1, max_frames=2)] == [0, 1]
    frame = next(iter_video_frames(video))
    floor = rec.min_eye_mouth
    try:
        rec.min_eye_mouth = 1000.0  # every face is "too small": reported, never guessed
        fr = rec.identify_image(gallery, frame.image)
    finally:
        rec.min_eye_mouth = floor
    assert len(fr.faces) == 2
    assert all(f.status == "too_small" and f.identity is None and f.top_k == [] for f in fr.faces)


def test_align_detections_floor_and_local_warp():
    from ranface.align.mtcnn import Detections
    from ranface.align.templates import template_for
    from ranface.align.transform import estimate_similarity, warp_face

    pts = template_for((112, 112), "arcface")
    big = pts * 2.0 + [40, 30]  # eye-to-mouth about 2 * 40 px
    small = pts * 0.1 + [300, 5]  # about 4 px
    det = Detections(np.zeros((2, 4)), np.ones(2), np.stack([big, small]))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (200, 320, 3), dtype=np.uint8)
    faces, em = align_detections(img, det, pts, (112, 112), min_eye_mouth=8.0)
    assert faces[1] is None and faces[0].shape == (112, 112, 3)
    # arcface template: eye midpoint (55.913, 51.599), mouth midpoint (56.140, 92.285): 40.687 px
    np.testing.assert_allclose(em, [2 * 40.6866, 0.1 * 40.6866], rtol=1e-4)
    # warp_local = warp_face on the whole image, inside and across the photo's edges
    for lm in (big, pts * 1.5 + [230, 60], pts * 0.7 - [10, 20]):
        m = estimate_similarity(lm, pts)
        a = warp_local(img, m, (112, 112))
        b = warp_face(img, m, (112, 112))
        assert np.abs(a.astype(int) - b).max() <= 1


def test_bad_videos_name_the_file(tmp_path):
    pytest.importorskip("av")
    from ranface.deploy.video import iter_video_frames

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 definitely not a video " * 50)
    with pytest.raises(DataError, match=r"broken\.mp4: cannot (open|decode) video"):
        list(iter_video_frames(str(bad)))
    with pytest.raises(DataError, match=r"missing\.mp4: cannot open video"):
        list(iter_video_frames(str(tmp_path / "missing.mp4")))


def test_empty_frame_result_serialises():
    fr = FrameResult("x.jpg", None, None, 10, 10, [])
    assert fr.to_dict()["faces"] == []
    f = FaceResult(np.array([1, 2, 3, 4.0]), 0.99, np.zeros((5, 2)), 5.0, "too_small")
    assert f.label() == "too small" and f.to_dict()["top_k"] == []


def test_identify_reports_bad_inputs_and_empty_photos(setup, tmp_path):
    from PIL import Image

    rec, gallery, _, _ = setup
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(blank)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 20)
    bad_jpg = tmp_path / "bad.jpg"
    bad_jpg.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="broken.mp4"):
        list(rec.identify(gallery, [str(blank), str(broken)]))
    frames = list(rec.identify(gallery, [str(blank), str(broken), str(bad_jpg)], on_error="skip"))
    assert [(os.path.basename(f.source), len(f.faces), bool(f.error)) for f in frames] == [
        ("blank.png", 0, False), ("broken.mp4", 0, True), ("bad.jpg", 0, True)]
    assert "broken.mp4" in frames[1].error
    rows = list(csv.DictReader(open(write_results(str(tmp_path / "r.csv"), frames, {}))))
    assert [r["status"] for r in rows] == ["no_face", "unreadable", "unreadable"]
    empty = rec.new_gallery()
    from ranface.errors import RanfaceError

    with pytest.raises(RanfaceError, match="holds no identities"):
        list(rec.identify(empty, [str(blank)]))
