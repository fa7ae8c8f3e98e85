"""Degradation operators: how ranface makes low-resolution faces.

Used for evaluation probes ("a 16 px face": :func:`down_up`), for the ``bicubic``
degrader compared against MR-GAN (paper Table 1, "Down-Sampling"), for the three blur
levels x_r1..x_r3 fed to MR-GAN (§3.2), and for the random Gaussian blur added while
training the LR model (§4.2, :class:`RandomGaussianBlur`).

Every operator takes either a float tensor ``(N, 3, H, W)`` (or ``(3, H, W)``) whose
values span ``value_range`` (default ``(-1, 1)``, what :func:`ranface.data.image.to_tensor`
produces), or a numpy ``HxWx3`` uint8 image (then the range is 0..255 and the result is
rounded back to uint8). Randomness comes only from an explicit ``torch.Generator`` (or
an int seed), so a pipeline is reproducible given its seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError

__all__ = [
    "KERNELS",
    "DEFAULT_RANGE",
    "downsample",
    "upsample",
    "down_up",
    "sample_widths",
    "lr_jpeg",
    "WIDTH_LAWS",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg",
    "DegradeConfig",
    "DegradeParams",
    "RandomDegradation",
    "RandomGaussianBlur",
    "SecondOrderConfig",
    "SecondOrderDegradation",
]

KERNELS = ("bicubic", "bilinear", "area", "nearest")
DEFAULT_RANGE: Tuple[float, float] = (-1.0, 1.0)

Image = Union[torch.Tensor, np.ndarray]
GeneratorLike = Union[torch.Generator, int, None]
PerSample = Union[float, Sequence[float], torch.Tensor]


# --------------------------------------------------------------------------- plumbing
def _to_batch(x: Image, value_range: Optional[Tuple[float, float]]
              ) -> Tuple[torch.Tensor, Optional[Tuple[float, float]],
                         Callable[[torch.Tensor], Image]]:
    """Any accepted input -> (float32 NCHW tensor, its value range, inverse conversion)."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"numpy images must be HxWx3 uint8, got {x.shape} {x.dtype}")
        t = torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float()  # own, writable copy

        def back_np(y: torch.Tensor) -> np.ndarray:
            # a contiguous HxWx3 array: the next stage (another operator, the embedder)
            # takes it without numpy's slow strided copy of a permuted view
            return y[0].round().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()

        return t, (0.0, 255.0), back_np
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"expected a float tensor or an HxWx3 uint8 array, got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')}")
    if x.ndim not in (3, 4):
        raise ValueError(f"expected (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    dtype, single = x.dtype, x.ndim == 3
    t = (x[None] if single else x).float()

    def back_t(y: torch.Tensor) -> torch.Tensor:
        y = y.to(dtype)
        return y[0] if single else y

    return t, value_range, back_t


def _clamp(t: torch.Tensor, value_range: Optional[Tuple[float, float]]) -> torch.Tensor:
    return t if value_range is None else t.clamp(value_range[0], value_range[1])


def _span(value_range: Optional[Tuple[float, float]]) -> float:
    return 1.0 if value_range is None else float(value_range[1] - value_range[0])


def _generator(generator: GeneratorLike) -> Optional[torch.Generator]:
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return generator


def _per_sample(v: PerSample, n: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"{name}: expected one value or {n}, got {t.numel()}")
    if (t < 0).any() or not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite and >= 0, got {t.tolist()}")
    return t


def _resize(t: torch.Tensor, hw: Tuple[int, int], kernel: str) -> torch.Tensor:
    if kernel in ("bicubic", "bilinear"):
        # antialias=True low-passes when shrinking (PIL's filters; bicubic a=-0.5);
        # without it a 112 -> 16 shrink samples 16 pixels and aliases.
        return F.interpolate(t, size=hw, mode=kernel, align_corners=False, antialias=True)
    if kernel == "area":
        return F.interpolate(t, size=hw, mode="area")
    if kernel == "nearest":
        # "nearest-exact" samples pixel centres like PIL; torch's "nearest" is shifted.
        return F.interpolate(t, size=hw, mode="nearest-exact")
    raise ValueError(f"unknown kernel {kernel!r}; choose from {KERNELS}")


def _lr_shape(h: int, w: int, size: int) -> Tuple[int, int]:
    if size < 1:
        raise ValueError(f"size must be >= 1 pixel, got {size}")
    return max(1, round(h * size / w)), size


# -------------------------------------------------------------------------- operators
def downsample(x: Image, size: int, kernel: str = "bicubic",
               value_range: Optional[Tuple[float, float]] = DEFAULT_RANGE) -> Image:
    """Shrink so the width is ``size`` pixels, keeping the aspect ratio.

    Bilinear and bicubic are antialiased (their kernel is widened by the scale factor),
    area averages, nearest point-samples (aliases on purpose: a cheap-camera model).
    Bicubic overshoot is clamped to ``value_range`` (None: no clamp).
    """
    t, vr, back = _to_batch(x, value_range)
    return back(_clamp(_resize(t, _lr_shape(*t.shape[-2:], size), kernel), vr))


def upsample(x: Image, hw: Tuple[int, int], kernel: str = "bicubic",
             value_range: Optional[Tuple[float, float]] = DEFAULT_RANGE) -> Image:
    """Resize to ``hw = (height, width)`` (the model's input size), clamped."""
    t, vr, back = _to_batch(x, value_range)
    return back(_clamp(_resize(t, (int(hw[0]), int(hw[1])), kernel), vr))


WIDTH_LAWS = ("uniform", "log")


def sample_widths(n: int, lo: int, hi: int, generator: Optional[torch.Generator] = None,
                  law: str = "uniform") -> torch.Tensor:
    """(n,) integer widths (px) in [lo, hi] that faces are shrunk to, drawn from ``generator``:
    the one law of every degrader's LR level (bicubic twins, second-order, MR-GAN's z level).

    ``uniform``: every width equally likely (``torch.randint``); ``log``: log-uniform, each
    octave of width equally likely (more very small faces)."""
    if law == "uniform":
        return torch.randint(int(lo), int(hi) + 1, (n,), generator=generator)
    if law != "log":
        raise ValueError(f"width law must be one of {WIDTH_LAWS}, got {law!r}")
    u = torch.rand(n, generator=generator, device=generator.device if generator is not None else None)
    w = torch.exp(math.log(lo) + u.cpu().double() * (math.log(hi + 1) - math.log(lo)))
    return w.floor().clamp(lo, hi).long()


def down_up(x: Image, size: int, down: str = "bicubic", up: str = "bicubic",
            value_range: Optional[Tuple[float, float]] = DEFAULT_RANGE) -> Image:
    """The classic LR probe: shrink to ``size`` px wide, resize back to the input size.

    A ``size`` at least the input width returns an unchanged copy. Both resizes are
    antialiased (see :func:`downsample`) and clamped to ``value_range``.
    """
    t, vr, back = _to_batch(x, value_range)
    h, w = t.shape[-2:]
    if size >= w:
        return back(t.clone())
    lr = _clamp(_resize(t, _lr_shape(h, w, size), down), vr)
    return back(_clamp(_resize(lr, (h, w), up), vr))


def _gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    r = kernel_size // 2
    xs = torch.arange(-r, r + 1, dtype=torch.float32)
    # sigma 0 -> a tiny width, whose kernel is exactly a delta (exp underflows to 0).
    s = sigma.clamp_min(1e-12)[:, None]
    k = torch.exp(-0.5 * (xs[None] / s) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: Image, sigma: PerSample, kernel_size: Optional[int] = None) -> Image:
    """Separable Gaussian blur; ``sigma`` in pixels, one value or one per image.

    ``kernel_size`` defaults to ``2 * ceil(3 * max(sigma)) + 1``; borders are reflected.
    ``sigma == 0`` leaves an image unchanged. The range never grows (a convex average).
    """
    t, _, back = _to_batch(x, None)
    n, c, h, w = t.shape
    sig = _per_sample(sigma, n, "sigma")
    if kernel_size is None:
        kernel_size = 2 * math.ceil(3 * float(sig.max())) + 1
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    if float(sig.max()) == 0.0 or kernel_size == 1:
        return back(t.clone())
    r = kernel_size // 2
    k = _gaussian_kernels(sig, kernel_size).repeat_interleave(c, dim=0).to(t.device)
    mode = "reflect" if r < min(h, w) else "replicate"
    y = F.pad(t.reshape(1, n * c, h, w), (r, r, r, r), mode=mode)
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    return back(y.reshape(n, c, h, w))


def gaussian_noise(x: Image, sigma: PerSample, generator: GeneratorLike = None,
                   value_range: Optional[Tuple[float, float]] = DEFAULT_RANGE) -> Image:
    """Add i.i.d. Gaussian noise, then clamp to ``value_range``.

    ``sigma`` is a fraction of the full range (``5 / 255`` = five grey levels whatever
    the tensor's normalisation); one value or one per image.
    """
    t, vr, back = _to_batch(x, value_range)
    sig = _per_sample(sigma, t.shape[0], "sigma") * _span(vr)
    noise = torch.randn(t.shape, generator=_generator(generator)).to(t.device)
    return back(_clamp(t + noise * sig.to(t.device)[:, None, None, None], vr))


def jpeg(x: Image, quality: Union[int, Sequence[int]],
         value_range: Optional[Tuple[float, float]] = DEFAULT_RANGE) -> Image:
    """JPEG-compress each image through PIL at ``quality`` (1..100; one or per image).

    Tensors are quantised to 8 bits on the way, as a camera's encoder would see them.
    """
    from .data.image import decode_image, encode_image

    t, vr, back = _to_batch(x, value_range)
    if vr is None:
        raise ValueError("jpeg needs a value_range to map the tensor to 8 bits")
    n = t.shape[0]
    qs = [int(q) for q in (quality if isinstance(quality, Sequence) else [quality] * n)]
    if len(qs) != n or not all(1 <= q <= 100 for q in qs):
        raise ValueError(f"quality must be 1..100, one value or one per image, got {quality}")
    lo, span = vr[0], _span(vr)
    u8 = ((t - lo) / span * 255.0).round().clamp(0, 255).to(torch.uint8).cpu()
    out = torch.empty_like(t)
    for i in range(n):
        arr = u8[i].permute(1, 2, 0).numpy()
        dec = decode_image(encode_image(arr, "jpeg", qs[i]), source="<jpeg round trip>")
        dec_t = torch.from_numpy(np.array(dec)).permute(2, 0, 1).float()  # PIL's is read-only
        out[i] = dec_t.to(t.device) / 255.0 * span + lo
    return back(out)


def lr_jpeg(x: Image, widths: Sequence[int], quality: Sequence[int],
            value_range: Optional[Tuple[float, float]] = DEFAULT_RANGE,
            down: str = "bicubic", up: str = "bicubic") -> Image:
    """A camera's codec at the face's own resolution: face i shrunk to ``widths[i]`` px
    wide, JPEG-compressed at ``quality[i]`` (:func:`jpeg`), enlarged back to its size.

    A surveillance face of w px was encoded at w px (its blocks and ringing are w-px
    artefacts), and enlarging the decoded face smears them into the soft blotches of real
    LR faces; the same JPEG at the enlarged size would leave sharp 8x8 blocks. A width at
    least the face's own skips the resizes (JPEG at full size)."""
    t, vr, back = _to_batch(x, value_range)
    n, (h, w) = t.shape[0], t.shape[-2:]
    if len(widths) != n or len(quality) != n:
        raise ValueError(f"lr_jpeg: need one width and one quality per image ({n}), got "
                         f"{len(widths)} and {len(quality)}")
    out = torch.empty_like(t)
    for i in range(n):
        wi = int(widths[i])
        small = t[i:i + 1] if wi >= w else _clamp(_resize(t[i:i + 1], _lr_shape(h, w, wi), down), vr)
        small = jpeg(small, int(quality[i]), vr)
        out[i] = (small if wi >= w else _clamp(_resize(small, (h, w), up), vr))[0]
    return back(out)


# --------------------------------------------------------------------- random pipelines
@dataclass
class DegradeConfig:
    """Ranges and probabilities of :class:`RandomDegradation` (paper: none given).

    Defaults describe surveillance faces seen at 112x112: the face is shrunk to 8..32 px
    wide (IJB-C TinyFace / QMUL-SurvFace faces are ~10-30 px) with a random resampling
    kernel and always brought back to the input size; optics blur sigma 0..1.5 px (at
    the input size) half of the time; sensor noise up to 5 grey levels and JPEG quality
    30..90, each 30% of the time, both applied at the low resolution where a camera
    adds them. Noise sigma is a fraction of the value range.
    """

    down_up_p: float = 1.0
    size_range: Tuple[int, int] = (8, 32)
    down_kernels: Tuple[str, ...] = ("bicubic", "bilinear", "area", "nearest")
    up_kernels: Tuple[str, ...] = ("bicubic", "bilinear")
    blur_p: float = 0.5
    blur_sigma: Tuple[float, float] = (0.0, 1.5)
    noise_p: float = 0.3
    noise_sigma: Tuple[float, float] = (0.0, 5.0 / 255.0)
    jpeg_p: float = 0.3
    jpeg_quality: Tuple[int, int] = (30, 90)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_p") and not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"degrade.{f.name}: probability {v} is not in [0, 1]")
            if f.name in ("size_range", "blur_sigma", "noise_sigma", "jpeg_quality"):
                if len(v) != 2 or not 0 <= v[0] <= v[1]:
                    raise ConfigError(f"degrade.{f.name}: expected [low, high] with "
                                      f"0 <= low <= high, got {list(v)}")
            if f.name.endswith("_kernels"):
                bad = [k for k in v if k not in KERNELS]
                if not v or bad:
                    raise ConfigError(f"degrade.{f.name}: unknown kernels {bad} "
                                      f"(choose from {list(KERNELS)})")
        if self.size_range[0] < 1:
            raise ConfigError(f"degrade.size_range: sizes must be >= 1 px, got "
                              f"{list(self.size_range)}")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ConfigError(f"degrade.jpeg_quality: must lie in 1..100, got "
                              f"{list(self.jpeg_quality)}")


@dataclass(frozen=True)
class DegradeParams:
    """One draw of :class:`RandomDegradation`; ``None`` / 0 means the step is skipped."""

    blur_sigma: float = 0.0
    size: Optional[int] = None
    down: str = "bicubic"
    up: str = "bicubic"
    noise_sigma: float = 0.0
    jpeg_quality: Optional[int] = None


def _uniform(g: Optional[torch.Generator], lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _randint(g: Optional[torch.Generator], lo: int, hi: int) -> int:
    return int(torch.randint(lo, hi + 1, (), generator=g))


class RandomDegradation:
    """A random blur -> shrink -> noise -> JPEG -> enlarge pipeline, drawn per image.

    Noise and JPEG act at the low resolution, so enlarging turns them into the soft
    blotches of real surveillance frames rather than pixel-sharp noise on a blurry face.
    Every random number comes from the generator, in a fixed order per image, all of
    them drawn whether a step is applied or not: the same seed gives the same images.
    """

    def __init__(self, config: Optional[DegradeConfig] = None,
                 value_range: Optional[Tuple[float, float]] = DEFAULT_RANGE):
        self.config = config or DegradeConfig()
        self.value_range = value_range

    def sample(self, generator: GeneratorLike = None) -> DegradeParams:
        c, g = self.config, _generator(generator)
        blur = _uniform(g, *c.blur_sigma)
        size = _randint(g, *c.size_range)
        down = c.down_kernels[_randint(g, 0, len(c.down_kernels) - 1)]
        up = c.up_kernels[_randint(g, 0, len(c.up_kernels) - 1)]
        noise = _uniform(g, *c.noise_sigma)
        quality = _randint(g, *c.jpeg_quality)
        on = torch.rand(4, generator=g).tolist()
        return DegradeParams(blur_sigma=blur if on[0] < c.blur_p else 0.0,
                             size=size if on[1] < c.down_up_p else None,
                             down=down, up=up,
                             noise_sigma=noise if on[2] < c.noise_p else 0.0,
                             jpeg_quality=quality if on[3] < c.jpeg_p else None)

    def apply(self, x: Image, params: DegradeParams, generator: GeneratorLike = None) -> Image:
        """Degrade ``x`` (all images alike) with fixed ``params``; noise uses ``generator``."""
        t, vr, back = _to_batch(x, self.value_range)
        return back(_degrade(t, params, _generator(generator), vr))

    def __call__(self, x: Image, generator: GeneratorLike = None) -> Image:
        """Degrade each image with its own parameters drawn from ``generator``."""
        t, vr, back = _to_batch(x, self.value_range)
        g = _generator(generator)
        out = torch.empty_like(t)
        for i in range(t.shape[0]):
            out[i] = _degrade(t[i:i + 1], self.sample(g), g, vr)[0]
        return back(out)


def _degrade(t: torch.Tensor, params: DegradeParams, g: Optional[torch.Generator],
             vr: Optional[Tuple[float, float]]) -> torch.Tensor:
    h, w = t.shape[-2:]
    if params.blur_sigma > 0:
        t = gaussian_blur(t, params.blur_sigma)
    resized = params.size is not None and params.size < w
    if resized:
        t = _clamp(_resize(t, _lr_shape(h, w, params.size), params.down), vr)
    if params.noise_sigma > 0:
        t = gaussian_noise(t, params.noise_sigma, g, vr)
    if params.jpeg_quality is not None:
        t = jpeg(t, params.jpeg_quality, vr)
    if resized:
        t = _clamp(_resize(t, (h, w), params.up), vr)
    return t


class RandomGaussianBlur:
    """The LR stage's augmentation (§4.2): with probability ``p`` per image, a Gaussian
    blur of sigma drawn uniformly from ``sigma_range`` (pixels at the input size).

    The paper gives no numbers; the defaults equal :class:`DegradeConfig`'s blur step.
    The whole batch is blurred in one grouped convolution.
    """

    def __init__(self, sigma_range: Tuple[float, float] = (0.0, 1.5), p: float = 0.5):
        if len(sigma_range) != 2 or not 0 <= sigma_range[0] <= sigma_range[1]:
            raise ConfigError(f"blur sigma_range: expected [low, high] with 0 <= low <= high, "
                              f"got {list(sigma_range)}")
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"blur p: probability {p} is not in [0, 1]")
        self.sigma_range = (float(sigma_range[0]), float(sigma_range[1]))
        self.p = float(p)

    def __call__(self, x: Image, generator: GeneratorLike = None) -> Image:
        t, _, back = _to_batch(x, None)
        g = _generator(generator)
        n = t.shape[0]
        lo, hi = self.sigma_range
        sigma = lo + (hi - lo) * torch.rand(n, generator=g)
        on = torch.rand(n, generator=g) < self.p
        return back(gaussian_blur(t, torch.where(on, sigma, torch.zeros(n))))


# --------------------------------------------------------------------- second order
@dataclass
class SecondOrderConfig:
    """:class:`SecondOrderDegradation`, the blind super-resolution habit (Real-ESRGAN,
    Wang et al. 2021: "high-order degradation"), sized for faces seen at 112 px.

    Two passes of blur -> resize -> noise -> JPEG, each pass's four operations in a random
    order. The first pass shrinks the face to ``first_ratio`` x the final width (a camera's
    own optics, sensor and encoder), the second to the final width ``size_range`` (the
    re-encoding and rescaling of a video pipeline); the face is then enlarged back with a
    random kernel. Blur sigmas are in pixels at the resolution where the blur acts; noise
    sigma is a fraction of the range; each operation is on with its probability ``*_p``.
    """

    size_range: Tuple[int, int] = (8, 32)  # final width (px)
    first_ratio: Tuple[float, float] = (1.0, 2.5)  # first pass width / final width
    blur_p: Tuple[float, float] = (1.0, 0.8)  # per pass
    blur_sigma: Tuple[float, float] = (0.2, 2.0)
    noise_p: Tuple[float, float] = (0.6, 0.5)
    noise_sigma: Tuple[float, float] = (1.0 / 255.0, 12.0 / 255.0)
    jpeg_p: Tuple[float, float] = (0.8, 0.8)
    jpeg_quality: Tuple[int, int] = (30, 95)
    down_kernels: Tuple[str, ...] = ("bicubic", "bilinear", "area")
    up_kernels: Tuple[str, ...] = ("bicubic", "bilinear")

    def __post_init__(self) -> None:
        for name in ("blur_p", "noise_p", "jpeg_p"):
            v = getattr(self, name)
            if len(v) != 2 or not all(0.0 <= float(p) <= 1.0 for p in v):
                raise ConfigError(f"second-order.{name}: expected two probabilities in [0, 1] "
                                  f"(first, second pass), got {list(v)}")
        for name in ("size_range", "first_ratio", "blur_sigma", "noise_sigma", "jpeg_quality"):
            v = getattr(self, name)
            if len(v) != 2 or not 0 <= v[0] <= v[1]:
                raise ConfigError(f"second-order.{name}: expected [low, high] with 0 <= low <= high, "
                                  f"got {list(v)}")
        if self.size_range[0] < 1 or self.first_ratio[0] < 1.0:
            raise ConfigError("second-order: size_range must be >= 1 px and first_ratio >= 1")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ConfigError(f"second-order.jpeg_quality: must lie in 1..100, got {list(self.jpeg_quality)}")
        for name in ("down_kernels", "up_kernels"):
            bad = [k for k in getattr(self, name) if k not in KERNELS]
            if not getattr(self, name) or bad:
                raise ConfigError(f"second-order.{name}: unknown kernels {bad} (choose from {list(KERNELS)})")


class SecondOrderDegradation:
    """Two random blur / resize / noise / JPEG passes (see :class:`SecondOrderConfig`).

    ``widths(n, g)`` draws the final width of each face (the first draws of ``g``, so the
    level of each face can be recorded); ``__call__`` then draws each face's parameters
    from the same generator, in a fixed order: the same seed gives the same faces.
    """

    OPS = ("blur", "resize", "noise", "jpeg")

    def __init__(self, config: Optional[SecondOrderConfig] = None,
                 value_range: Optional[Tuple[float, float]] = DEFAULT_RANGE):
        self.config = config or SecondOrderConfig()
        self.value_range = value_range

    def widths(self, n: int, generator: GeneratorLike = None) -> torch.Tensor:
        return sample_widths(n, *self.config.size_range, generator=_generator(generator))

    def __call__(self, x: Image, generator: GeneratorLike = None) -> Image:
        t, vr, back = _to_batch(x, self.value_range)
        g = _generator(generator)
        finals = self.widths(t.shape[0], g).tolist()
        out = torch.empty_like(t)
        for i, w in enumerate(finals):
            out[i] = self._one(t[i:i + 1], int(w), g, vr)[0]
        return back(out)

    def _one(self, t: torch.Tensor, final: int, g: Optional[torch.Generator],
             vr: Optional[Tuple[float, float]]) -> torch.Tensor:
        c = self.config
        h, w = t.shape[-2:]
        first = min(w, max(final, int(round(final * _uniform(g, *c.first_ratio)))))
        for p, width in enumerate((first, final)):
            order = torch.randperm(4, generator=g).tolist()
            on = torch.rand(3, generator=g).tolist()
            sigma, noise = _uniform(g, *c.blur_sigma), _uniform(g, *c.noise_sigma)
            quality = _randint(g, *c.jpeg_quality)
            down = c.down_kernels[_randint(g, 0, len(c.down_kernels) - 1)]
            for k in order:
                op = self.OPS[k]
                if op == "blur" and on[0] < c.blur_p[p]:
                    t = gaussian_blur(t, sigma)
                elif op == "resize" and width < t.shape[-1]:
                    t = _clamp(_resize(t, _lr_shape(h, w, width), down), vr)
                elif op == "noise" and on[1] < c.noise_p[p]:
                    t = gaussian_noise(t, noise, g, vr)
                elif op == "jpeg" and on[2] < c.jpeg_p[p] and min(t.shape[-2:]) >= 8:
                    t = jpeg(t, quality, vr)
        up = c.up_kernels[_randint(g, 0, len(c.up_kernels) - 1)]
        return _clamp(_resize(t, (h, w), up), vr)
