"""MTCNN: weight loading, network shapes, the cascade on real photos, padding, upscales."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ranface.align import MTCNN, Detections, ONet, PNet, RNet, eye_mouth_distance
from ranface.align.mtcnn import WEIGHT_FILES, default_weights_dir, load_mtcnn_nets
from ranface.align.nms import box_overlap
from ranface.errors import CheckpointError, ConfigError

DATA = Path(os.environ.get("RANFACE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
LFW = DATA / "lfw-gray" / "images"
CROWD = DATA / "crowd-photos" / "images"
WEIGHTS = default_weights_dir()
LFW_FILES = ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "AJ_Cook/AJ_Cook_0001.jpg",
             "Adrien_Brody/Adrien_Brody_0001.jpg", "Amy_Smart/Amy_Smart_0001.jpg",
             "Bob_Holden/Bob_Holden_0001.jpg"]

needs_weights = pytest.mark.skipif(WEIGHTS is None or not os.path.isdir(WEIGHTS),
                                   reason="pip install --no-deps facenet-pytorch==2.6.0")
needs_lfw = pytest.mark.skipif(not LFW.is_dir(), reason="needs ../shared/data/lfw-gray")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # MTCNN's tensors are small: on a shared 2-core box, 2 intra-op threads thrash
    # (10x slower under load), so run single-threaded and restore afterwards.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def mtcnn():
    return MTCNN()


def _lfw(name):
    from ranface.data.image import read_image

    return read_image(LFW / name)


def test_network_output_shapes():
    torch.manual_seed(0)
    reg, prob = PNet()(torch.randn(2, 3, 12, 12))
    assert reg.shape == (2, 4, 1, 1) and prob.shape == (2, 2, 1, 1)
    reg, prob = PNet()(torch.randn(1, 3, 100, 60))
    assert reg.shape == (1, 4, 45, 25)  # stride 2, 12x12 receptive field
    reg, prob = RNet()(torch.randn(3, 3, 24, 24))
    assert reg.shape == (3, 4) and prob.shape == (3, 2)
    torch.testing.assert_close(prob.sum(1), torch.ones(3))
    reg, lm, prob = ONet()(torch.randn(4, 3, 48, 48))
    assert reg.shape == (4, 4) and lm.shape == (4, 10) and prob.shape == (4, 2)


@needs_weights
def test_weights_load_into_our_modules():
    pnet, rnet, onet = load_mtcnn_nets()
    for net, name in zip((pnet, rnet, onet), WEIGHT_FILES):
        state = torch.load(os.path.join(WEIGHTS, name), weights_only=True)
        assert set(state) == set(net.state_dict())
        torch.testing.assert_close(net.state_dict()["conv1.weight"], state["conv1.weight"])
        assert not net.training


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_mtcnn_nets(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "pnet.pt") in msg
    assert "pip install --no-deps facenet-pytorch==2.6.0" in msg


@needs_weights
def test_bad_weights_files(tmp_path):
    for name in WEIGHT_FILES:
        shutil.copy(os.path.join(WEIGHTS, name), tmp_path / name)
    (tmp_path / "rnet.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"rnet\.pt: cannot load"):
        load_mtcnn_nets(tmp_path)
    state = torch.load(os.path.join(WEIGHTS, "rnet.pt"), weights_only=True)
    state["dense4.weight"] = torch.zeros(128, 100)
    torch.save(state, tmp_path / "rnet.pt")
    with pytest.raises(CheckpointError, match=r"rnet\.pt \(dense4\.weight\): does not fit"):
        load_mtcnn_nets(tmp_path)
    del state["dense4.weight"]
    torch.save(state, tmp_path / "rnet.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_mtcnn_nets(tmp_path)


def test_config_errors():
    for bad in (dict(min_face_size=1), dict(factor=1.2), dict(thresholds=(0.6, 0.7)),
                dict(pad_ratio=-1), dict(pad_mode="reflect"), dict(upscales=()),
                dict(upscales=(0,)), dict(merge_mode="max")):
        with pytest.raises(ConfigError):
            MTCNN(weights_dir="/nonexistent", **bad)


@needs_weights
def test_blank_image_and_bad_input(mtcnn):
    det = mtcnn.detect(np.full((120, 160, 3), 128, np.uint8))
    assert isinstance(det, Detections) and len(det) == 0
    assert det.boxes.shape == (0, 4) and det.landmarks.shape == (0, 5, 2)
    assert len(mtcnn.detect(np.zeros((8, 200, 3), np.uint8))) == 0  # below P-Net's 12 px
    with pytest.raises(ValueError):
        mtcnn.detect(np.zeros((10, 10, 4), np.uint8))
    with pytest.raises(ValueError):
        mtcnn.detect(np.zeros((10, 10, 3), np.float32))


@pytest.mark.data
@needs_weights
@needs_lfw
def test_lfw_one_face_plausible_landmarks(mtcnn):
    for name in LFW_FILES:
        img = _lfw(name)
        det = mtcnn.detect(img)
        good = det.scores >= 0.9
        assert good.sum() >= 1, name
        assert np.all(np.diff(det.scores) <= 0)
        lm, box = det.landmarks[0], det.boxes[0]
        assert 30 <= eye_mouth_distance(lm) <= 60, name
        assert lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0], name
        assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1]), name
        # Landmarks inside their box, box around the photo centre.
        assert (lm[:, 0] > box[0]).all() and (lm[:, 0] < box[2]).all(), name
        assert (lm[:, 1] > box[1]).all() and (lm[:, 1] < box[3]).all(), name
        assert box[0] < 125 < box[2] and box[1] < 125 < box[3], name
        # Grey 2-D input is the same image.
        np.testing.assert_allclose(mtcnn.detect(img[:, :, 0]).landmarks, det.landmarks)


@pytest.mark.data
@needs_weights
@needs_lfw
def test_mirrored_photo_mirrors_landmarks(mtcnn):
    # x -> W-1-x under the pixel-centre convention; left and right swap roles.
    img = _lfw(LFW_FILES[0])
    a = mtcnn.detect(img).landmarks[0]
    b = mtcnn.detect(np.ascontiguousarray(img[:, ::-1])).landmarks[0]
    mirrored = np.stack([img.shape[1] - 1 - b[:, 0], b[:, 1]], 1)[[1, 0, 2, 4, 3]]
    assert np.abs(mirrored - a).max() < 4.5  # detector noise ~2-3 px; a swap costs ~40


@pytest.mark.data
@needs_weights
@needs_lfw
def test_padding_and_upscaling_map_back_to_original_pixels(mtcnn):
    img = _lfw(LFW_FILES[1])
    base = mtcnn.detect(img)
    for kw in (dict(pad_ratio=0.5), dict(pad_ratio=0.5, pad_mode="replicate"),
               dict(upscales=(2,)), dict(upscales=(1.5,), pad_ratio=0.3)):
        other = MTCNN(**kw).detect(img)
        assert len(other) >= 1, kw
        assert np.abs(other.landmarks[0] - base.landmarks[0]).max() < 3, kw
        assert box_overlap(base.boxes[0], other.boxes[:1])[0] > 0.8, kw


@pytest.mark.data
@needs_weights
@needs_lfw
def test_padding_finds_faces_that_fill_the_frame(mtcnn):
    # A tight crop: the face fills the frame and reaches past its edges.
    img = _lfw(LFW_FILES[0])
    lm = mtcnn.detect(img).landmarks[0]
    cx, cy = lm.mean(0).round().astype(int)
    tight = np.ascontiguousarray(img[cy - 40:cy + 40, cx - 40:cx + 40])
    padded = MTCNN(pad_ratio=0.5).detect(tight)
    assert len(padded) >= 1 and padded.scores[0] > 0.9
    # Same points as in the full photo, up to detector noise between framings (~3 px).
    expect = lm - [cx - 40, cy - 40]
    assert np.abs(padded.landmarks[0] - expect).mean() < 3
    assert np.abs(padded.landmarks[0] - expect).max() < 6


@pytest.mark.data
@needs_weights
@pytest.mark.skipif(not (CROWD / "peiyunh_tiny__selfie.jpg").is_file(),
                    reason="needs ../shared/data/crowd-photos")
def test_multiscale_finds_more_small_faces(mtcnn):
    from ranface.data.image import read_image

    img = read_image(CROWD / "peiyunh_tiny__selfie.jpg")[0:400, 700:1200]  # a dense corner
    single = mtcnn.detect(img)
    multi = MTCNN(upscales=(1, 2, 3)).detect(img)
    n1, n3 = (single.scores >= 0.9).sum(), (multi.scores >= 0.9).sum()
    assert n3 >= n1 + 10 and n3 >= 25, (n1, n3)
    small = eye_mouth_distance(multi.landmarks[multi.scores >= 0.9])
    assert np.median(small) < 12  # the extra faces are the tiny ones
    # Every confident single-scale face is still there after merging.
    for box in single.boxes[single.scores >= 0.9]:
        assert box_overlap(box, multi.boxes).max() > 0.5


@needs_weights
def test_pnet_skips_only_windows_of_black(mtcnn):
    """Issue 16: P-Net runs over the non-black part of a level only; every cell it
    reports must equal the whole-level computation (written out here) and none lost."""
    from ranface.align.mtcnn import _normalise

    g = torch.Generator().manual_seed(0)
    for h, w, box in ((90, 120, (17, 70, 31, 95)), (64, 64, (0, 40, 9, 64)), (50, 77, (3, 50, 0, 77))):
        lvl = torch.zeros(1, 3, h, w)
        y0, y1, x0, x1 = box
        lvl[:, :, y0:y1, x0:x1] = torch.rand(1, 3, y1 - y0, x1 - x0, generator=g) * 255
        with torch.inference_mode():
            reg, prob = mtcnn.pnet(_normalise(lvl).contiguous(memory_format=torch.channels_last))
            top = prob[0, 1].flatten().double().sort(descending=True).values
            t1 = float(top[19] + top[20]) / 2  # 20 cells pass, none at the threshold
            got = mtcnn._pnet_level(lvl, t1)
        p = prob[0, 1].double().numpy()
        ys, xs = np.nonzero(p >= t1)
        assert got is not None and len(ys) > 0
        order = np.lexsort((got[1], got[0]))
        np.testing.assert_array_equal(got[0][order], ys)
        np.testing.assert_array_equal(got[1][order], xs)
        # the same cells; values up to the float rounding of oneDNN's blocking by size
        np.testing.assert_allclose(got[2][order], p[ys, xs], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[3][order], reg[0].double().numpy()[:, ys, xs].T, rtol=1e-5, atol=1e-6)
    assert mtcnn._zero_prob < 0.01  # an all-black window is no face
    with torch.inference_mode():
        assert mtcnn._pnet_level(torch.zeros(1, 3, 40, 40), 0.6) is None


@needs_weights
def test_enlarged_copies_search_only_new_scales(monkeypatch):
    seen = []

    def record(self, img, scales=None):
        seen.append((img.size[1], list(scales)))
        return Detections.empty()

    monkeypatch.setattr(MTCNN, "_cascade", record)
    img = np.zeros((100, 150, 3), np.uint8)
    det = MTCNN(upscales=(2, 1), upscale_new_only=True)
    det.detect(img)
    (w1, s1), (w2, s2) = seen  # ascending order: the 1x copy first
    assert (w1, w2) == (150, 300)
    assert s1 == det._scales(100, 150)
    full2 = det._scales(200, 300)
    step = 1 / np.sqrt(det.factor)
    assert s2 == [s for s in full2 if 2 * s > s1[0] * step] and len(s2) == 2  # 2x: faces of 10-20 px
    seen.clear()
    MTCNN(upscales=(1, 2), upscale_new_only=False).detect(img)
    assert [s for _, s in seen] == [det._scales(100, 150), full2]


# -- the black margin is never materialised (issue 16, fourth round) --------------------
def _frame_crop(frame, box, size):
    """A 1-based inclusive box of the whole frame, black outside it, resized as before."""
    import torch.nn.functional as F

    x1, y1, x2, y2 = (int(v) for v in box)
    H, W = frame.shape[-2:]
    patch = torch.zeros(1, 3, y2 - y1 + 1, x2 - x1 + 1)
    sy0, sx0, sy1, sx1 = max(y1 - 1, 0), max(x1 - 1, 0), min(y2, H), min(x2, W)
    if sy1 > sy0 and sx1 > sx0:
        patch[:, :, sy0 - y1 + 1:sy1 - y1 + 1, sx0 - x1 + 1:sx1 - x1 + 1] = frame[:, :, sy0:sy1, sx0:sx1]
    if size <= patch.shape[2] and size <= patch.shape[3]:
        return F.interpolate(patch, size=(size, size), mode="area")
    return F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@pytest.mark.parametrize("h,w,top,left,size", [(75, 120, 19, 30, (113, 180)),
                                               (64, 50, 0, 7, (64, 64)), (40, 33, 0, 0, (40, 33))])
def test_canvas_levels_enlargement_and_crops_equal_torch_on_the_whole_frame(h, w, top, left, size):
    """The pyramid levels, the 2x copy and the R/O-Net crops made from the photo's block
    alone are torch's resizes of the whole black-padded frame, bit for bit."""
    import math

    import torch.nn.functional as F
    from ranface.align.mtcnn import _Canvas, _crops, _normalise

    g = torch.Generator().manual_seed(h)
    c = _Canvas(torch.randint(0, 256, (1, 3, h, w), generator=g).float(), top, left, size)
    frame = c.frame()
    assert frame.shape[-2:] == size and float(frame.sum()) == float(c.pixels.sum())
    rng = np.random.default_rng(h)
    for k in (1, 2, 4):
        big = (k * size[0], k * size[1])
        ck = c if k == 1 else c.enlarge(big)
        fk = frame if k == 1 else F.interpolate(frame, size=big, mode="bilinear", align_corners=False)
        assert torch.equal(ck.frame(), fk)
        assert ck.unit == 1 / (2 * k) ** 2 if k > 1 else ck.unit == 1
        for s in (0.6, 0.43, 0.3, 0.21, 0.15, 0.1):
            lsz = (math.ceil(big[0] * s), math.ceil(big[1] * s))
            part, r0, c0 = ck.level(lsz)
            full = torch.zeros(1, 3, *lsz)
            full[:, :, r0:r0 + part.shape[2], c0:c0 + part.shape[3]] = part
            assert torch.equal(full, F.interpolate(fk, size=lsz, mode="area")), (k, s)
        # an enlarging level (min_face_size < 12): bilinear, cropped to its non-zero cells
        lsz = (big[0] * 3 // 2, big[1] * 3 // 2)
        part, r0, c0 = ck.level(lsz)
        full = torch.zeros(1, 3, *lsz)
        full[:, :, r0:r0 + part.shape[2], c0:c0 + part.shape[3]] = part
        assert torch.equal(full, F.interpolate(fk, size=lsz, mode="bilinear", align_corners=False,
                                               antialias=True))
        assert part[0].amax(dim=(0, 2)).gt(0).all() and part[0].amax(dim=(0, 1)).gt(0).all()
        # boxes inside, across the block's edge, across the frame's edge and outside
        xy = rng.integers(-20, max(big) + 20, (60, 2))
        side = rng.integers(5, 70, 60)
        side[::3] = 30  # boxes of one size are resized together
        boxes = np.concatenate([xy, xy + side[:, None]], 1).astype(np.float64)
        for crop in (24, 48):
            got = _crops(ck, boxes, crop)
            want = _normalise(torch.cat([_frame_crop(fk, b, crop) for b in boxes]))
            assert torch.equal(got, want)
    # any other factor resizes the whole frame
    odd = (size[0] * 3 // 2, size[1] * 3 // 2)
    c3 = c.enlarge(odd)
    assert c3.unit is None and torch.equal(c3.frame(), F.interpolate(
        frame, size=odd, mode="bilinear", align_corners=False))


def test_canvas_level_of_coarse_cells_is_the_mean_to_float32_rounding():
    """Cells of more than 2^24 / 255 units: torch's own float32 running sum rounds, so
    the canvas's exact sums agree with it to float32 rounding, not bit for bit."""
    import torch.nn.functional as F
    from ranface.align.mtcnn import _Canvas

    g = torch.Generator().manual_seed(5)
    c = _Canvas(torch.randint(0, 256, (1, 3, 700, 900), generator=g).float(), 50, 60, (800, 1000))
    c2 = c.enlarge((1600, 2000))  # sixteenths: cells above 4112 pixels are not exact in float32
    part, r0, c0 = c2.level((12, 15))
    want = F.interpolate(c2.frame(), size=(12, 15), mode="area")
    assert (r0, c0) == (0, 0) and part.shape == want.shape
    torch.testing.assert_close(part, want, rtol=1e-6, atol=1e-4)
    exact = F.interpolate(c2.frame().double(), size=(12, 15), mode="area")
    assert not torch.equal(want.double(), exact.to(torch.float32).double())  # torch rounds here
    # the canvas: exact sums, then torch's two float32 divisions (at most ~2 ulp)
    eps = torch.finfo(torch.float32).eps
    assert bool(((part.double() - exact).abs() <= 2 * eps * exact.abs()).all())


def test_rnet_onet_chunks_equal_one_pass():
    from ranface.align.mtcnn import _CHUNK, _batched

    torch.manual_seed(0)
    for net, side in ((RNet(), 24), (ONet(), 48)):
        net = net.to(memory_format=torch.channels_last).eval()
        x = torch.randn(2 * _CHUNK[type(net).__name__] + 7, 3, side, side)
        with torch.inference_mode():
            one = net(x.contiguous(memory_format=torch.channels_last))
            got = _batched(net, x)
        assert len(got) == len(one)
        for a, b in zip(got, one):  # same bits here; other CPUs' kernels may round by size
            np.testing.assert_allclose(a, b.double().numpy(), rtol=1e-5, atol=1e-6)


def test_pnet_in_stripes_equals_one_pass():
    """Stripes see the same input windows as one pass (the crowd benchmark finds the
    same bits on every level; allow for kernels that round by size on other CPUs)."""
    from ranface.align.mtcnn import _normalise, _pnet_stripes

    torch.manual_seed(0)
    pnet = PNet().to(memory_format=torch.channels_last).eval()
    for h, w in ((301, 600), (300, 530), (64, 800), (57, 41)):
        x = _normalise(torch.rand(1, 3, h, w) * 255).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            one = pnet(x)
            for cells in (40, 4000, 36_000):
                got = _pnet_stripes(pnet, x, cells)
                for a, b in zip(got, one):
                    assert a.shape == b.shape
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- issue 16, fifth round: written-out kernels that give torch's values --------------------
@pytest.mark.parametrize("shape", [(1, 10, 56, 98), (1, 10, 57, 99), (2, 10, 12, 13),
                                   (1, 10, 1, 1), (1, 3, 2, 7)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_pnet_max_pool_equals_torch(shape, channels_last):
    from ranface.align.mtcnn import _max_pool_2x2

    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g) - 0.5  # negative values: no zero padding may win
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = _max_pool_2x2(x)
    assert torch.equal(got, torch.nn.MaxPool2d(2, 2, ceil_mode=True)(x))
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last or min(shape[2:]) == 1


@pytest.mark.parametrize("h,w", [(1, 1), (1, 5), (4, 1), (7, 10), (64, 33)])
@pytest.mark.parametrize("unit", [1.0, 1 / 16])
def test_upsample2x_equals_torch_bilinear(h, w, unit):
    import torch.nn.functional as F
    from ranface.align.mtcnn import _upsample2x

    g = torch.Generator().manual_seed(h * w)
    x = torch.randint(0, int(255 / unit) + 1, (1, 3, h, w), generator=g).float() * unit
    want = F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
    assert torch.equal(_upsample2x(x), want)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("batch", [1 << 18, 20_000])
def test_crops_from_column_sums_in_width_batches_equal_torch(k, batch):
    """Shrinking boxes of many sizes (inside the block, across its edge and the frame's)
    are resized in batches from the canvas's column sums, each box with its own cells:
    torch's bits. A small batch budget makes batches of one box and of several."""
    import ranface.align.mtcnn as m

    g = torch.Generator().manual_seed(k)
    c = m._Canvas(torch.randint(0, 256, (1, 3, 260, 300), generator=g).float(), 20, 30, (300, 360))
    ck = c if k == 1 else c.enlarge((600, 720))
    frame = ck.frame()
    rng = np.random.default_rng(k)
    side = rng.integers(24, 240, 40)
    side[:6] = [24, 25, 47, 48, 49, 239]
    x1 = rng.integers(-30, frame.shape[3] - side // 2)
    y1 = rng.integers(-30, frame.shape[2] - side // 2)
    tall = side + rng.integers(0, 5, 40)  # trunc can leave a box one or a few rows taller
    boxes = np.stack([x1, y1, x1 + side - 1, y1 + tall - 1], 1).astype(np.float64)
    calls = []
    real = m._sum_crops
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(m, "_SUM_BATCH", batch)
        mp.setattr(m, "_sum_crops", lambda *a: calls.append(len(a[1])) or real(*a))
        for size in (24, 48):
            got = m._crops(ck, boxes, size)
            want = m._normalise(torch.cat([_frame_crop(frame, b, size) for b in boxes]))
            assert torch.equal(got, want), size
    assert calls and max(calls) > 1 and (batch > 20_000 or min(calls) == 1)


def test_crops_whose_sums_are_not_exact_in_float32_run_torch():
    """A 2x copy holds sixteenths: cells of more than 4112 pixels would not sum exactly
    in float32, so such boxes take torch's kernel (its own rounding), the rest the sums."""
    import ranface.align.mtcnn as m

    g = torch.Generator().manual_seed(3)
    c = m._Canvas(torch.randint(0, 256, (1, 3, 500, 500), generator=g).float(), 0, 0, (800, 800))
    c2 = c.enlarge((1600, 1600))
    # cells of up to 68 x 68 pixels (> 4112) and of 5 x 5
    boxes = np.array([[1, 1, 1600, 1600], [11, 21, 110, 120]], dtype=np.float64)
    calls = []
    real = m._sum_crops
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(m, "_sum_crops", lambda *a: calls.append(len(a[1])) or real(*a))
        got = m._crops(c2, boxes, 24)
    assert calls == [1]
    want = m._normalise(torch.cat([_frame_crop(c2.frame(), b, 24) for b in boxes]))
    assert torch.equal(got, want)


def test_canvas_with_float64_column_sums_gives_torchs_levels_and_crops():
    """A 2x copy taller than 4112 rows keeps its column sums in float64 (float32 would
    round them); its levels and crops with exact cells are still torch's bits."""
    import math

    import torch.nn.functional as F
    import ranface.align.mtcnn as m

    g = torch.Generator().manual_seed(7)
    c = m._Canvas(torch.randint(0, 256, (1, 3, 2100, 30), generator=g).float(), 50, 15, (2200, 60))
    c2 = c.enlarge((4400, 120))
    assert c2.column_sums().dtype == torch.float64
    frame = c2.frame()
    for s in (0.6, 0.3):
        lsz = (math.ceil(4400 * s), math.ceil(120 * s))
        part, r0, c0 = c2.level(lsz)
        full = torch.zeros(1, 3, *lsz)
        full[:, :, r0:r0 + part.shape[2], c0:c0 + part.shape[3]] = part
        assert torch.equal(full, F.interpolate(frame, size=lsz, mode="area")), s
    boxes = np.array([[20, 90, 70, 140], [1, 4000, 40, 4039], [31, 200, 120, 289]], dtype=np.float64)
    for size in (24, 48):
        want = m._normalise(torch.cat([_frame_crop(frame, b, size) for b in boxes]))
        assert torch.equal(m._crops(c2, boxes, size), want), size
