"""Alignment geometry, templates, face selection, NMS and the FaceAligner pipeline."""
from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ranface.align import (ARCFACE_112, DLIB_150, AlignResult, Detections, FaceAligner,
                           apply_affine, batched_nms, box_overlap, choose_face,
                           estimate_similarity, eye_mouth_distance, fraction_outside,
                           invert_affine, lr_select, nms, template_for, warp_face)
from ranface.align.mtcnn import default_weights_dir
from ranface.errors import ConfigError

DATA = Path(os.environ.get("RANFACE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LFW = DATA / "lfw-gray" / "images"
LFW_FILES = ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "AJ_Cook/AJ_Cook_0001.jpg",
             "Adrien_Brody/Adrien_Brody_0001.jpg", "Amy_Smart/Amy_Smart_0001.jpg",
             "Bob_Holden/Bob_Holden_0001.jpg"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # MTCNN's tensors are small: on a shared 2-core box, 2 intra-op threads thrash
    # (10x slower under load), so run single-threaded and restore afterwards.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx],
                     [scale * math.sin(a), scale * math.cos(a), ty]])


# -- transform ------------------------------------------------------------------------
@pytest.mark.parametrize("angle,scale,tx,ty", [(0, 1, 0, 0), (17, 2.3, 40, -12),
                                               (-35, 0.4, 3.5, 90), (170, 1.7, -20, 5)])
def test_similarity_recovers_known_map(angle, scale, tx, ty):
    known = similarity(angle, scale, tx, ty)
    src = apply_affine(known, ARCFACE_112)  # landmarks as found in some photo
    m = estimate_similarity(src, ARCFACE_112)
    np.testing.assert_allclose(m, invert_affine(known), atol=1e-9)
    np.testing.assert_allclose(apply_affine(m, src), ARCFACE_112, atol=1e-4)


def test_similarity_matches_linear_least_squares_on_noisy_points():
    rng = np.random.default_rng(3)
    for _ in range(20):
        src = rng.uniform(0, 200, (5, 2))
        dst = apply_affine(similarity(rng.uniform(-180, 180), rng.uniform(0.2, 3),
                                      *rng.uniform(-50, 50, 2)), src)
        dst += rng.normal(0, 3, dst.shape)
        # x' = a x - b y + tx, y' = b x + a y + ty: linear in (a, b, tx, ty), no reflection.
        rows = np.concatenate([np.stack([src[:, 0], -src[:, 1], np.ones(5), np.zeros(5)], 1),
                               np.stack([src[:, 1], src[:, 0], np.zeros(5), np.ones(5)], 1)])
        a, b, tx, ty = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]),
                                       rcond=None)[0]
        np.testing.assert_allclose(estimate_similarity(src, dst),
                                   [[a, -b, tx], [b, a, ty]], atol=1e-8)


def test_similarity_never_reflects():
    mirrored = ARCFACE_112 * np.array([-1.0, 1.0])
    m = estimate_similarity(mirrored, ARCFACE_112)
    assert np.linalg.det(m[:, :2]) > 0
    # The best reflection-free fit cannot reach the template: residual stays large.
    assert np.abs(apply_affine(m, mirrored) - ARCFACE_112).max() > 5


def test_similarity_rejects_degenerate_points():
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), ARCFACE_112)
    with pytest.raises(ValueError, match="NaN"):
        estimate_similarity(np.full((5, 2), np.nan), ARCFACE_112)


def _ramp(h: int = 80, w: int = 80) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([2 * x + y + 5, x + 2 * y + 5, x + y + 40], -1).astype(np.uint8)


def test_warp_follows_pixel_centre_convention():
    # Bilinear sampling reproduces a linear ramp exactly, so every output pixel must
    # equal the ramp at the inverse-mapped centre; a half-pixel error costs >= 1.5 levels.
    img = _ramp()
    m = similarity(23, 1.3, 10.25, -7.5)
    out = warp_face(img, m, (90, 100))
    v, u = np.mgrid[0:90, 0:100]
    src = apply_affine(invert_affine(m), np.stack([u, v], -1).astype(np.float64))
    inside = (src[..., 0] >= 0) & (src[..., 0] <= 79) & (src[..., 1] >= 0) & (src[..., 1] <= 79)
    assert inside.sum() > 3000
    sx, sy = src[..., 0][inside], src[..., 1][inside]
    expect = np.stack([2 * sx + sy + 5, sx + 2 * sy + 5, sx + sy + 40], -1)
    assert np.abs(out[inside].astype(np.float64) - expect).max() <= 0.51


def test_warp_identity_is_exact_and_grey_supported():
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    np.testing.assert_array_equal(warp_face(img, ident, (30, 40)), img)
    np.testing.assert_array_equal(warp_face(img[:, :, 0], ident, (30, 40)), img[:, :, 0])


@pytest.mark.parametrize("border", ["constant", "replicate", "reflect"])
def test_warp_border_modes(border):
    img = np.random.default_rng(1).integers(1, 256, (20, 30, 3), dtype=np.uint8)
    shift = np.array([[1.0, 0, 10], [0, 1.0, 0]])  # output column j shows source x = j - 10
    out = warp_face(img, shift, (20, 30), border=border)
    np.testing.assert_array_equal(out[:, 10:], img[:, :20])
    left = out[:, :10]
    if border == "constant":
        assert (left == 0).all()
    elif border == "replicate":
        np.testing.assert_array_equal(left, np.repeat(img[:, :1], 10, axis=1))
    else:  # mirror about the image edge: x = -1 -> 0, x = -10 -> 9
        np.testing.assert_array_equal(left, img[:, 9::-1])


def test_warp_rejects_bad_input():
    with pytest.raises(ValueError, match="border"):
        warp_face(_ramp(), np.eye(2, 3), (10, 10), border="wrap")
    with pytest.raises(ValueError, match="uint8"):
        warp_face(_ramp().astype(np.float32), np.eye(2, 3), (10, 10))


# -- templates ------------------------------------------------------------------------
def test_templates():
    np.testing.assert_allclose(template_for((112, 112), "arcface"), ARCFACE_112)
    np.testing.assert_allclose(template_for((150, 150), "dlib"), DLIB_150)
    # insightface's 112x96 template is the 112x112 one shifted 8 px left.
    np.testing.assert_allclose(template_for((112, 96)), ARCFACE_112 - [8, 0])
    # Doubling the frame doubles the template about the outer corner (-0.5, -0.5).
    np.testing.assert_allclose(template_for((224, 224)), (ARCFACE_112 + 0.5) * 2 - 0.5)
    small = template_for((16, 16))
    assert 0 < small.min() and small.max() < 16
    assert ARCFACE_112[0, 0] < ARCFACE_112[1, 0] and ARCFACE_112[2, 1] < ARCFACE_112[3, 1]
    with pytest.raises(ValueError):
        template_for((112, 112), "mtcnn")


# -- select ---------------------------------------------------------------------------
def test_eye_mouth_distance():
    lm = np.array([[10, 20], [30, 20], [20, 30], [12, 44], [28, 44]], float)
    assert eye_mouth_distance(lm) == pytest.approx(24.0)
    batch = np.stack([lm, lm * 2])
    np.testing.assert_allclose(eye_mouth_distance(batch), [24.0, 48.0])
    # The ArcFace template's eye-to-mouth distance: mean of the y's, about 40.7 px.
    assert eye_mouth_distance(ARCFACE_112) == pytest.approx(40.68, abs=0.01)


def test_lr_band_widths_round_trip():
    from ranface.align.select import LR_BAND, band_to_widths, eye_mouth_fraction, widths_to_band

    # hand-computed: ArcFace eyes at y 51.6, mouth at y 92.3 -> 40.68 / 112; dlib 59.3 / 150
    assert eye_mouth_fraction("arcface") == pytest.approx(40.68 / 112, abs=1e-4)
    assert eye_mouth_fraction("dlib") == pytest.approx(59.30 / 150, abs=1e-3)
    assert LR_BAND == (10.0, 30.0)
    assert band_to_widths(LR_BAND, "dlib") == (25, 76)  # 10 / 0.3954, 30 / 0.3954
    assert band_to_widths(LR_BAND, "arcface") == (28, 83)
    lo, hi = widths_to_band((25, 76), "dlib")
    assert lo == pytest.approx(9.88, abs=0.01) and hi == pytest.approx(30.05, abs=0.01)
    with pytest.raises(ValueError, match="band"):
        band_to_widths((30, 10))
    with pytest.raises(ValueError, match="template"):
        eye_mouth_fraction("nope")


def test_lr_select_inclusive_bounds():
    d = [9.999, 10.0, 20.0, 30.0, 30.001, float("nan")]
    np.testing.assert_array_equal(lr_select(d), [False, True, True, True, False, False])
    np.testing.assert_array_equal(lr_select(d, lo=20, hi=20), [0, 0, 1, 0, 0, 0])
    with pytest.raises(ValueError):
        lr_select(d, lo=30, hi=10)


def test_choose_face_policies():
    boxes = np.array([[0, 0, 50, 50],        # largest, top-left corner
                      [90, 90, 110, 110],    # centred, small
                      [150, 0, 190, 40]])    # best score
    scores = np.array([0.95, 0.91, 0.999])
    shape = (200, 200, 3)
    assert choose_face(boxes, scores, shape, "largest") == 0
    assert choose_face(boxes, scores, shape, "center") == 1
    assert choose_face(boxes, scores, shape, "score") == 2
    with pytest.raises(ValueError):
        choose_face(boxes[:0], scores[:0], shape)
    with pytest.raises(ValueError):
        choose_face(boxes, scores, shape, "first")


def test_fraction_outside():
    assert fraction_outside([10, 10, 20, 20], (100, 100)) == 0.0
    assert fraction_outside([-10, 0, 10, 10], (100, 100)) == pytest.approx(0.5)
    assert fraction_outside([95, 95, 105, 105], (100, 100)) == pytest.approx(0.75)
    assert fraction_outside([200, 200, 210, 210], (100, 100)) == 1.0


# -- NMS ------------------------------------------------------------------------------
def _brute_nms(boxes, scores, thr, mode, offset):
    def overlap(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + offset)
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + offset)
        inter = iw * ih
        area_a = (a[2] - a[0] + offset) * (a[3] - a[1] + offset)
        area_b = (b[2] - b[0] + offset) * (b[3] - b[1] + offset)
        return inter / (min(area_a, area_b) if mode == "min" else area_a + area_b - inter)

    kept = []
    for i in sorted(range(len(boxes)), key=lambda k: -scores[k]):
        if all(overlap(boxes[i], boxes[j]) <= thr for j in kept):
            kept.append(i)
    return kept


def _random_boxes(rng, n):
    centres = rng.uniform(0, 100, (max(1, n // 8), 2))[rng.integers(0, max(1, n // 8), n)]
    centres += rng.normal(0, 6, (n, 2))  # clusters, so that suppression happens
    wh = rng.uniform(5, 40, (n, 2))
    wh[rng.uniform(size=n) < 0.05] *= 4  # a few big boxes span many others
    return np.concatenate([centres - wh / 2, centres + wh / 2], 1), rng.uniform(0, 1, n)


@pytest.mark.parametrize("mode,offset", list(itertools.product(["union", "min"], [0.0, 1.0])))
def test_nms_matches_brute_force(mode, offset):
    rng = np.random.default_rng(7)
    for trial in range(25):
        boxes, scores = _random_boxes(rng, int(rng.integers(1, 120)))
        for thr in (0.3, 0.5, 0.7):
            got = nms(boxes, scores, thr, mode, offset)
            assert got.tolist() == _brute_nms(boxes, scores, thr, mode, offset)
    assert len(nms(np.zeros((0, 4)), np.zeros(0), 0.5)) == 0


@pytest.mark.parametrize("mode", ["union", "min"])
def test_overlap_pairs_in_any_budget_are_every_overlapping_pair(mode):
    """The sweep compares each box with its own window, a budget of pairs at a time:
    whatever the budget, it finds exactly the pairs a comparison of all pairs finds."""
    from ranface.align.nms import _overlap_pairs, box_overlap

    rng = np.random.default_rng(3)
    boxes, _ = _random_boxes(rng, 150)
    boxes[:3, 2:] = boxes[:3, :2]  # zero-area boxes overlap nothing
    want = {(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if box_overlap(boxes[i], boxes[j:j + 1], mode, 1.0)[0] > 0.4}
    assert len(want) > 50
    for budget in (1, 37, 1 << 20):
        first, second = _overlap_pairs(boxes, 0.4, mode, 1.0, budget=budget)
        got = {(min(a, b), max(a, b)) for a, b in zip(first.tolist(), second.tolist())}
        assert got == want and len(first) == len(want)


def test_nms_suppresses_and_keeps_as_expected():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [2, 2, 6, 6], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # Union: box 1 (IoU 0.68) goes at 0.5; box 2 (IoU 0.16) inside box 0 stays.
    assert nms(boxes, scores, 0.5, "union").tolist() == [0, 2, 3]
    # Min: box 2 lies wholly inside box 0 (overlap 1.0) and goes too.
    assert nms(boxes, scores, 0.5, "min").tolist() == [0, 3]
    assert box_overlap(boxes[0], boxes[2:3], "min")[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        nms(boxes, scores, 0.5, "max")


def test_batched_nms_is_per_group():
    rng = np.random.default_rng(11)
    boxes, scores = _random_boxes(rng, 80)
    groups = rng.integers(0, 3, 80)
    got = batched_nms(boxes, scores, groups, 0.4)
    expect = []
    for g in range(3):
        idx = np.flatnonzero(groups == g)
        expect += idx[_brute_nms(boxes[idx], scores[idx], 0.4, "union", 0.0)].tolist()
    assert sorted(got.tolist()) == sorted(expect)
    assert np.all(np.diff(scores[got]) <= 0)


# -- pipeline with a stand-in detector (no weights needed) ----------------------------
class _FakeDetector:
    """Returns fixed detections, so the pipeline's own logic is tested in isolation."""

    def __init__(self, det: Detections):
        self.det = det

    def detect(self, img):
        return self.det


def _fake_scene():
    img = _ramp(200, 200)
    big = apply_affine(similarity(10, 1.5, 20, 15), ARCFACE_112)   # larger face, off-centre
    small = apply_affine(similarity(-5, 0.8, 55, 60), ARCFACE_112)  # smaller face, centred
    lms = np.stack([big, small])
    boxes = np.stack([np.r_[lm.min(0) - 20, lm.max(0) + 20] for lm in lms])
    return img, Detections(boxes, np.array([0.99, 0.95]), lms)


def test_aligner_policy_and_landmark_mapping():
    img, det = _fake_scene()
    al = FaceAligner(policy="largest", detector=_FakeDetector(det))
    res = al.align(img)
    assert isinstance(res, AlignResult) and res.ok and res.reason is None
    assert res.face.shape == (112, 112, 3) and res.face.dtype == np.uint8
    np.testing.assert_allclose(res.landmarks, det.landmarks[0])
    assert res.eye_mouth_px == pytest.approx(1.5 * eye_mouth_distance(ARCFACE_112))
    # The face is the photo resampled through the inverse of the known map.
    expect = warp_face(img, invert_affine(similarity(10, 1.5, 20, 15)), (112, 112))
    assert np.abs(res.face.astype(int) - expect.astype(int)).max() <= 1
    centre = FaceAligner(policy="center", detector=_FakeDetector(det)).align(img)
    np.testing.assert_allclose(centre.landmarks, det.landmarks[1])


def test_aligner_min_score_no_face_and_fallback():
    img, det = _fake_scene()
    strict = FaceAligner(min_score=0.999, detector=_FakeDetector(det))
    res = strict.align(img)
    assert res.face is None and res.reason == "no face detected" and not res.ok
    assert strict.detect_all(img) == []
    fb = FaceAligner(min_score=0.999, center_crop_fallback=True, size=(112, 96),
                     detector=_FakeDetector(det)).align(img)
    assert fb.reason == "center-crop fallback" and fb.face.shape == (112, 96, 3)
    assert fb.landmarks is None and fb.score is None
    # The central 100x100 square (fallback_fraction 0.5 of 200), resized to height 112.
    half_w = 100 * 96 / 112 / 2
    np.testing.assert_allclose(fb.box, [100 - half_w, 50, 100 + half_w, 150])
    assert abs(int(fb.face[56, 48, 0]) - int(img[100, 100, 0])) <= 3


def test_aligner_detect_all_and_dlib_template():
    img, det = _fake_scene()
    al = FaceAligner(template="dlib", size=(150, 150), detector=_FakeDetector(det))
    faces = al.detect_all(img)
    assert [f.score for f in faces] == [0.99, 0.95]
    for f in faces:
        assert f.face.shape == (150, 150, 3)
        # The matrix takes the landmarks onto the (non-ArcFace) target template.
        mapped = apply_affine(f.matrix, f.landmarks)
        m2 = estimate_similarity(ARCFACE_112, DLIB_150)
        np.testing.assert_allclose(mapped, apply_affine(m2, ARCFACE_112), atol=1e-6)


def test_aligner_config_errors():
    det = _FakeDetector(Detections.empty())
    for bad in (dict(template="sphere"), dict(policy="first"), dict(border="wrap"),
                dict(size=(0, 112)), dict(min_score=2.0)):
        with pytest.raises(ConfigError):
            FaceAligner(detector=det, **bad)


# -- real photos ----------------------------------------------------------------------
needs_lfw = pytest.mark.skipif(not LFW.is_dir() or default_weights_dir() is None,
                               reason="needs ../shared/data/lfw-gray and facenet-pytorch weights")


@pytest.fixture(scope="module")
def lfw_aligner():
    return FaceAligner(policy="center", pad_ratio=0.5)


@pytest.mark.data
@needs_lfw
def test_align_real_lfw_photos(lfw_aligner):
    from ranface.data.image import read_image

    for name in LFW_FILES:
        img = read_image(LFW / name)
        res = lfw_aligner.align(img)
        assert res.ok, name
        lm = res.landmarks
        assert 30 <= res.eye_mouth_px <= 60, (name, res.eye_mouth_px)
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0], name     # left before right
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1]), name
        # LFW photos are centred on their subject.
        assert np.abs(lm.mean(0) - 125).max() < 25, name
        # Re-detecting on the aligned face finds the points where the matrix sent them,
        # and near the template (within face-shape variation: smiles, pose, MTCNN's nose).
        again = lfw_aligner.detect(res.face)
        assert len(again) >= 1
        k = choose_face(again.boxes, again.scores, res.face.shape, "center")
        assert np.abs(again.landmarks[k] - apply_affine(res.matrix, lm)).max() < 3, name
        assert np.abs(again.landmarks[k] - ARCFACE_112).max() < 8, name
