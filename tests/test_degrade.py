"""Tests of the degradation operators (down-up, blur, noise, JPEG, random pipelines)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ranface import degrade as D
from ranface.errors import ConfigError

LFW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lfw-gray" / "images"


def _face_like(seed: int = 0, n: int = 2, size: int = 112) -> torch.Tensor:
    """Smooth shapes plus texture in [-1, 1]: has both low and high frequencies."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    base = torch.tanh(4 * (0.6 - (xx ** 2 + yy ** 2).sqrt()))
    texture = 2 * torch.rand(n, 1, size, size, generator=g) - 1  # grey, like LFW
    return (base * 0.7 + 0.3 * texture).expand(n, 3, size, size).clamp(-1, 1).contiguous()


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def _lfw_crops(k: int):
    files = sorted(LFW.glob("*/*.jpg"))[::997][:k]
    if not files:
        pytest.skip("LFW data not available at ../shared/data/lfw-gray")
    return [np.asarray(Image.open(f).convert("RGB"))[69:181, 69:181] for f in files]


def _synthetic_u8(seed: int = 0) -> np.ndarray:
    x = _face_like(seed, 1)[0]
    return ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------- shapes, dtypes
@pytest.mark.parametrize("op", [
    lambda x: D.down_up(x, 16),
    lambda x: D.down_up(x, 9, down="area", up="bilinear"),
    lambda x: D.down_up(x, 20, down="nearest", up="nearest"),
    lambda x: D.gaussian_blur(x, 1.2),
    lambda x: D.gaussian_noise(x, 0.05, generator=1),
    lambda x: D.jpeg(x, 40),
    lambda x: D.RandomDegradation()(x, generator=3),
    lambda x: D.RandomGaussianBlur(p=1.0)(x, generator=3),
])
def test_ops_keep_shape_dtype_and_range(op):
    x = _face_like(1, n=3, size=96).to(torch.float64)
    y = op(x)
    assert y.shape == x.shape and y.dtype == torch.float64
    assert float(y.min()) >= -1.0 and float(y.max()) <= 1.0
    single = op(x[0])
    assert single.shape == x[0].shape
    u8 = _synthetic_u8()
    out = op(u8)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == u8.shape


def test_downsample_keeps_aspect_and_bad_input():
    x = _face_like(0, n=1, size=112)[:, :, :, :80]  # 112 high, 80 wide
    assert D.downsample(x, 16).shape == (1, 3, 22, 16)  # round(112 * 16 / 80) = 22
    assert D.upsample(D.downsample(x, 16), (112, 80)).shape == x.shape
    with pytest.raises(ValueError, match="unknown kernel"):
        D.down_up(x, 16, down="lanczos")
    with pytest.raises(ValueError, match="uint8"):
        D.down_up(np.zeros((8, 8, 3), np.float32), 4)
    with pytest.raises(ValueError, match="odd"):
        D.gaussian_blur(x, 1.0, kernel_size=4)


def test_down_up_at_full_size_is_a_copy():
    x = _face_like(0, n=1)
    y = D.down_up(x, 112)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


# ------------------------------------------------------------------ the 16 px claim
def test_area_nearest_down_up_is_an_exact_fixed_point():
    # 112 = 7 x 16: the area mean of 7x7 constant blocks gives the blocks back exactly.
    x = _face_like(2)
    y = D.down_up(x, 16, down="area", up="nearest")
    # Exact up to the float rounding of a 49-pixel mean.
    assert _maxdiff(D.down_up(y, 16, down="area", up="nearest"), y) <= 1e-6
    u8 = ((y[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(D.down_up(u8, 16, down="area", up="nearest"), u8)
    assert (y - x).abs().mean() > 0.05  # and it did remove detail


def test_bicubic_down_up_output_lives_in_a_16px_space():
    # With no clamp the result is U(l) for a 16x16 image l: its least-squares fit by
    # the 256 up-sampled basis images is exact.
    x = _face_like(3, n=1, size=64)[:, :1]
    y = D.down_up(x, 16, value_range=None)
    basis = torch.eye(256).reshape(256, 1, 16, 16)
    u = F.interpolate(basis, size=(64, 64), mode="bicubic", antialias=True,
                      align_corners=False).reshape(256, -1).T.double()
    yv = y.reshape(-1, 1).double()
    coef = torch.linalg.solve(u.T @ u, u.T @ yv)  # normal equations: U is well conditioned
    assert (u @ coef - yv).abs().max() < 1e-4


def test_bicubic_down_up_is_nearly_a_fixed_point_on_lfw():
    # Antialiased bicubic down after bicubic up is a mild low-pass, not the identity, so
    # a second pass still changes the image. Measured on 20 LFW 112x112 crops: mean
    # change 2.4 grey levels (max 3.2) against 9.8 for the first pass; ratio <= 0.32.
    # Tolerances: mean <= 4 grey levels and <= 0.4 of the first pass.
    for a in _lfw_crops(12):
        y = D.down_up(a, 16)
        z = D.down_up(y, 16)
        first = np.abs(y.astype(int) - a).mean()
        second = np.abs(z.astype(int) - y).mean()
        assert second <= 4.0 and second <= 0.4 * first


def test_down_up_matches_pil_bicubic():
    # Antialiased torch bicubic uses PIL's filter, so a "16 px probe" means the same here
    # as in PIL-based pipelines (e.g. the face-api measurement in data/README.md). PIL
    # rounds the 16x16 image to uint8 and works in fixed point: measured differences are
    # <= 1 grey level after the shrink and a mean of 0.27 after the round trip.
    for a in _lfw_crops(5):
        small = Image.fromarray(a).resize((16, 16), Image.BICUBIC)
        d_small = np.abs(np.asarray(small).astype(int) - D.downsample(a, 16))
        assert d_small.max() <= 1
        pil = small.resize((112, 112), Image.BICUBIC)
        d = np.abs(np.asarray(pil).astype(int) - D.down_up(a, 16))
        assert d.mean() < 0.5 and np.percentile(d, 99) <= 2


def test_lfw_8px_has_little_high_frequency_energy():
    def hf_energy(img: np.ndarray) -> float:
        g = img[:, :, 0].astype(np.float64)
        h, w = g.shape
        window = np.outer(np.hanning(h), np.hanning(w))  # no leakage from the borders
        spec = np.abs(np.fft.fftshift(np.fft.fft2((g - g.mean()) * window))) ** 2
        yy, xx = np.mgrid[-h // 2:h - h // 2, -w // 2:w - w // 2]
        return float(spec[np.hypot(yy / h, xx / w) > 0.1].sum())  # above 0.2 x Nyquist

    for a in _lfw_crops(4):
        ratio = hf_energy(D.down_up(a, 8)) / hf_energy(a)
        assert ratio < 0.02, ratio  # measured 0.0002..0.005 on 12 LFW crops


# ------------------------------------------------------------------ blur, noise, jpeg
def test_blur_sigma_zero_is_identity_and_blur_is_normalised():
    x = _face_like(4)
    assert torch.equal(D.gaussian_blur(x, 0.0), x)
    flat = torch.full((1, 3, 20, 20), 0.3)
    assert _maxdiff(D.gaussian_blur(flat, 2.0), flat) < 1e-6  # the kernel sums to 1
    # Per-image sigma: the image with sigma 0 is untouched, the other is smoothed.
    y = D.gaussian_blur(x, [0.0, 1.5])
    assert torch.equal(y[0], x[0])
    assert (y[1] - x[1]).abs().mean() > 0.05


def test_blur_matches_direct_gaussian_convolution():
    x = torch.zeros(1, 1, 15, 15).expand(1, 3, 15, 15).clone()
    x[..., 7, 7] = 1.0
    y = D.gaussian_blur(x, 1.0)  # kernel 7: an impulse gives the 2-D kernel itself
    k1 = torch.exp(-0.5 * torch.arange(-3.0, 4.0) ** 2)
    k1 /= k1.sum()
    assert _maxdiff(y[0, 0, 4:11, 4:11], k1[:, None] * k1[None, :]) < 1e-6


def test_noise_statistics_and_determinism():
    x = torch.zeros(2, 3, 64, 64)
    a = D.gaussian_noise(x, 0.05, generator=7)
    b = D.gaussian_noise(x, 0.05, generator=7)
    c = D.gaussian_noise(x, 0.05, generator=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # sigma is a fraction of the range (-1, 1): absolute std 0.1.
    assert float(a.std()) == pytest.approx(0.1, rel=0.05)
    u8 = np.full((64, 64, 3), 128, np.uint8)
    assert np.std(D.gaussian_noise(u8, 0.05, generator=1).astype(float)) == \
        pytest.approx(0.05 * 255, rel=0.05)


def test_jpeg_quality_100_is_close_and_low_quality_is_not():
    x = _face_like(5, n=1)
    hi = D.jpeg(x, 100)
    lo = D.jpeg(x, 10)
    err_hi = float((hi - x).abs().mean()) * 127.5
    err_lo = float((lo - x).abs().mean()) * 127.5
    assert err_hi < 2.0 and err_lo > 3 * err_hi
    with pytest.raises(ValueError, match="quality"):
        D.jpeg(x, 0)


# ---------------------------------------------------------------------- random pipelines
def test_random_degradation_is_deterministic_under_a_seed():
    x = _face_like(6, n=4)
    pipe = D.RandomDegradation()
    a = pipe(x, generator=123)
    b = pipe(x, generator=torch.Generator().manual_seed(123))
    c = pipe(x, generator=124)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Images of one batch get different parameters.
    g = torch.Generator().manual_seed(0)
    params = [pipe.sample(g) for _ in range(20)]
    assert len({p.size for p in params}) > 5
    assert all(8 <= p.size <= 32 for p in params)  # down_up_p = 1 by default


def test_random_degradation_apply_with_fixed_params():
    x = _face_like(7, n=1)
    pipe = D.RandomDegradation()
    none = D.DegradeParams()
    assert torch.equal(pipe.apply(x, none), x)
    only_down = D.DegradeParams(size=16)
    assert torch.equal(pipe.apply(x, only_down), D.down_up(x, 16))
    full = D.DegradeParams(blur_sigma=1.0, size=12, down="area", up="bilinear",
                           noise_sigma=0.02, jpeg_quality=50)
    y1 = pipe.apply(x, full, generator=5)
    assert torch.equal(y1, pipe.apply(x, full, generator=5))
    assert (y1 - x).abs().mean() > (pipe.apply(x, only_down) - x).abs().mean() * 0.5


def test_degrade_config_validation():
    with pytest.raises(ConfigError, match="blur_p"):
        D.DegradeConfig(blur_p=1.5)
    with pytest.raises(ConfigError, match="size_range"):
        D.DegradeConfig(size_range=(32, 8))
    with pytest.raises(ConfigError, match="down_kernels"):
        D.DegradeConfig(down_kernels=("lanczos",))
    with pytest.raises(ConfigError, match="jpeg_quality"):
        D.DegradeConfig(jpeg_quality=(50, 120))
    with pytest.raises(ConfigError, match="sigma_range"):
        D.RandomGaussianBlur(sigma_range=(2.0, 1.0))


def test_random_gaussian_blur_probability_and_seed():
    x = _face_like(8, n=64, size=32)
    never = D.RandomGaussianBlur((0.5, 1.5), p=0.0)(x, generator=1)
    assert torch.equal(never, x)
    blur = D.RandomGaussianBlur((0.5, 1.5), p=0.5)
    a = blur(x, generator=1)
    assert torch.equal(a, blur(x, generator=1)) and not torch.equal(a, blur(x, generator=2))
    changed = ((a - x).abs().flatten(1).amax(1) > 1e-6).sum().item()
    assert 16 <= changed <= 48  # about half of 64


def test_second_order_degradation_is_seeded_and_ends_at_the_drawn_width():
    from ranface.degrade import SecondOrderConfig, SecondOrderDegradation, down_up

    x = torch.rand(4, 3, 32, 32) * 2 - 1
    deg = SecondOrderDegradation(SecondOrderConfig(size_range=(6, 10)))
    a, b = deg(x, 3), deg(x, 3)
    assert torch.equal(a, b) and not torch.equal(a, deg(x, 4))
    assert a.shape == x.shape and float(a.min()) >= -1 and float(a.max()) <= 1
    # the widths are the first draws: recordable without degrading
    w = deg.widths(4, torch.Generator().manual_seed(3))
    assert all(6 <= int(v) <= 10 for v in w)
    # with every step off except the two resizes, the face is a down-up at the final width
    plain = SecondOrderDegradation(SecondOrderConfig(size_range=(8, 8), first_ratio=(1.0, 1.0),
                                                     blur_p=(0, 0), noise_p=(0, 0), jpeg_p=(0, 0),
                                                     down_kernels=("bicubic",), up_kernels=("bicubic",)))
    assert torch.allclose(plain(x, 0), down_up(x, 8), atol=1e-5)
    with pytest.raises(ConfigError, match="blur_p"):
        SecondOrderConfig(blur_p=(1.5, 0.0))


def test_lr_jpeg_codec_at_the_faces_own_width():
    """Each face: shrink to its width, JPEG at its quality, enlarge back (equal to the three
    operators by hand); a width at least the face's own is JPEG alone; counts must match."""
    from ranface.degrade import downsample, jpeg, lr_jpeg, upsample

    torch.manual_seed(0)
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    out = lr_jpeg(x, [8, 16, 40], [30, 60, 90])
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    for i, (w, q) in enumerate(((8, 30), (16, 60))):
        want = upsample(jpeg(downsample(x[i:i + 1], w), q), (32, 32))
        assert torch.allclose(out[i:i + 1], want, atol=1e-6)
    assert torch.allclose(out[2:3], jpeg(x[2:3], 90), atol=1e-6)
    # an 8-px face through the codec differs from the same face without it
    assert (out[0:1] - upsample(downsample(x[0:1], 8), (32, 32))).abs().mean() > 1e-3
    arr = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    assert lr_jpeg(arr, [8], [50]).dtype == np.uint8 and lr_jpeg(arr, [8], [50]).shape == arr.shape
    with pytest.raises(ValueError, match="one width and one quality per image"):
        lr_jpeg(x, [8, 8], [30, 30, 30])


def test_numpy_results_are_contiguous_rounded_uint8():
    """uint8 in, uint8 out: the float result rounded and clamped, as a C-contiguous HxWx3
    array (evaluation chains operators on it; a permuted view costs a strided copy each)."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    out = D.down_up(img, 9)
    assert out.dtype == np.uint8 and out.shape == img.shape and out.flags["C_CONTIGUOUS"]
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    lr = F.interpolate(t, size=(10, 9), mode="bicubic", align_corners=False, antialias=True).clamp(0, 255)
    up = F.interpolate(lr, size=(40, 36), mode="bicubic", align_corners=False, antialias=True).clamp(0, 255)
    np.testing.assert_array_equal(out, up[0].round().to(torch.uint8).permute(1, 2, 0).numpy())
    assert D.upsample(img, (50, 45)).flags["C_CONTIGUOUS"]
