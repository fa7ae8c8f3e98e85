"""Typed configs of MR-GAN (``ranface train-gan``) and of ``ranface synthesize``.

Used with :func:`ranface.config.load_config`: defaults <- YAML <- ``--set`` overrides.
Network widths and depths live in :class:`GeneratorConfig` / :class:`DiscriminatorConfig`;
two profiles are provided (:data:`PROFILES`, and ``configs/gan_small.yaml`` /
``configs/gan_paper.yaml``): ``small`` trains on a laptop CPU, ``paper`` is the GPU size.
The paper gives no widths (its supplementary material is not public), so the dataclass
defaults equal the ``paper`` profile, our estimate of a network of that kind.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from ..config import RunConfig
from ..errors import ConfigError


@dataclass
class GanDataConfig:
    """HR faces x (image folder ``<id>/<file>`` or ``.rec``) and an unpaired pool of real
    LR faces y (image folder, flat or ``<id>/<file>``); both aligned, ``face_size`` square."""

    hr: str = ""
    format: str = "auto"  # of ``hr``: auto | folder | rec
    lr_pool: str = ""
    face_size: int = 112
    batch_size: int = 16  # per process (paper §4.2: 16)
    num_workers: int = 2
    hflip: bool = True
    on_error: str = "raise"  # raise | skip (counted and reported)


@dataclass
class GeneratorConfig:
    """MR-GAN generator G (paper §3.2, Fig. 2-3); see :class:`ranface.gan.generator.MRGenerator`.

    ``scales``: the factors of the face size x is shrunk to for x_r1, x_r2, x_r3.
    ``base_width``: channels after the stem; each global sub-network ends its 3 strided
    convolutions at ``4 * base_width`` channels (S/8 pixels). ``num_stages``: residual
    stages, each followed by the fusion units r1 -> r2 -> r3. ``z_dim``: the noise vector.
    """

    scales: List[float] = field(default_factory=lambda: [0.5, 0.25, 0.125])
    base_width: int = 32
    num_stages: int = 3
    blocks_per_stage: int = 2
    se_reduction: int = 4
    z_dim: int = 16
    local_width: int = 32
    fuse_width: int = 32  # hidden channels of the two 1x1 convolutions that output G(x)
    template: str = "arcface"  # alignment of the faces (arcface | dlib): places the regions
    # z selects a degradation level (abstract, §3.2): the width x_r3 is shrunk to, drawn per
    # face in [lo, hi] px (``level_law``); x_r1 / x_r2 keep the ratios of ``scales``. Either
    # widths or an eye-to-mouth band (px, align.select.band_to_widths with ``template``);
    # both empty: the fixed ``scales`` (one level).
    level_widths: List[int] = field(default_factory=list)
    level_band: List[float] = field(default_factory=list)
    # how the level's width is drawn (ranface.degrade.sample_widths): uniform, as the bicubic,
    # random-degrade and second-order twins draw theirs (Table 1 compares like with like), or log
    level_law: str = "uniform"
    # G_l's patches fade into G_g over this fraction of a region's shorter side before the
    # two 1x1 convolutions (a seamless merge); 0: hard-edged boxes
    feather: float = 0.25
    # G^R ("the output residual face", §3.2) as x_r3 plus a learned residual, G_l's patches as
    # their x_r3 crop plus a residual, the merge ending in a clamp: G(x) = x_r3 (bicubic at
    # the level's width) at initialisation, and training learns what real LR faces add to
    # it. False: G^R, the patches and G(x) are tanh outputs learned from scratch
    # (docs/decisions.md, issue 12)
    residual: bool = True


@dataclass
class DiscriminatorConfig:
    """D_1 (global) and D_2..D_4 (eyes, nose, mouth): PatchGAN, LSGAN outputs."""

    base_width: int = 64
    global_downsamplings: int = 3
    local_downsamplings: int = 2
    max_width: int = 512
    template: str = "arcface"  # alignment of the faces (arcface | dlib): places D_2..D_4


@dataclass
class GanLossConfig:
    """Eq. 6 weights (lambda_1..4 = 2, 20, 20, 0.4, paper §4.2) and the loss details the
    paper leaves open.

    ``pixel_every`` and ``pixel_schedule``: two readings of §4.2's "pixel-critic is employed
    at every 5 generator iterations": ``g_every`` applies l3 L_pixel on every
    ``pixel_every``-th G update (D and G updated every step); ``d_ratio`` applies L_pixel on
    every G update and updates G once per ``pixel_every`` D updates (WGAN's n_critic). ``center_size``: Eq. 5's 85x82 centre patch as [width, height] at
    a 112 face, scaled with the face size. ``perceptual_normalize``: L2-normalise expert
    embeddings before Eq. 2's L1 distance. ``perceptual_stages``: indices into the
    expert's ``forward_stages()`` whose feature maps are added to Eq. 2 (empty: the
    embedding only).
    """

    lambda_adv: float = 2.0
    lambda_perc: float = 20.0
    lambda_pix: float = 20.0
    lambda_att: float = 0.4
    pixel_every: int = 5
    pixel_schedule: str = "d_ratio"  # d_ratio | g_every (docs/decisions.md, issue 12: d_ratio measured more realistic)
    center_size: List[int] = field(default_factory=lambda: [85, 82])
    perceptual_normalize: bool = True
    perceptual_stages: List[int] = field(default_factory=list)


@dataclass
class GanOptimConfig:
    """Adam for G and for D_1..D_4 (paper §4.2: lr 2e-4, betas (0.5, 0.999))."""

    lr: float = 2e-4
    d_lr: float = 0.0  # 0: same as lr
    betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    max_steps: int = 100000
    clip_grad_norm: float = 0.0  # 0: off


@dataclass
class GanConfig:
    """``ranface train-gan``.

    ``expert``: the frozen expert network F of Eq. 2: a face-api folder (the imported
    ResNet-29, the default), a ``model.pt`` / run directory / checkpoint of ``ranface
    train`` (the paper's MobileFaceNet). ``expert_backbone``: only for a face-api folder.
    ``image_every``: steps between sample grids (TensorBoard + PNG in ``samples/``).
    """

    data: GanDataConfig = field(default_factory=GanDataConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: GanLossConfig = field(default_factory=GanLossConfig)
    optim: GanOptimConfig = field(default_factory=GanOptimConfig)
    # compile_min_steps 0: auto (run.compile unset) stays eager for the GAN; a real fp32 run
    # compiled was slower a step after minutes of compiling (docs/performance.md "MR-GAN step")
    run: RunConfig = field(default_factory=lambda: RunConfig(compile_min_steps=0))
    expert: str = ""  # "" -> <data root>/models/faceapi-resnet29
    expert_backbone: str = ""
    image_every: int = 500
    num_samples: int = 8  # faces per sample grid


@dataclass
class SynthConfig:
    """``ranface synthesize``: stream ``input`` through a degrader into ``output``.

    ``options`` are the degrader's own (each degrader validates them; see
    :mod:`ranface.gan.degraders`). ``batch_size`` is part of the recorded randomness:
    a resumed run must use the same one.
    """

    input: str = ""
    output: str = ""
    format: str = "auto"  # auto | folder | rec
    degrader: str = "bicubic"
    options: Any = field(default_factory=dict)
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 2
    device: str = "auto"
    jpeg_quality: int = 95  # for JPEG outputs (folder files named .jpg, and .rec payloads)
    on_error: str = "raise"  # raise | skip (unreadable inputs counted and reported)
    overwrite: bool = False  # True: ignore an existing output instead of resuming it
    progress: bool = True


# Widths / depths of the two profiles (the YAML files in configs/ spell them out).
PROFILES: Dict[str, Dict[str, Dict[str, Any]]] = {
    "small": {"generator": {"base_width": 16, "num_stages": 2, "blocks_per_stage": 1, "z_dim": 8,
                            "local_width": 16, "fuse_width": 16},
              "discriminator": {"base_width": 32, "max_width": 256}},
    "paper": {"generator": {"base_width": 32, "num_stages": 3, "blocks_per_stage": 2, "z_dim": 16,
                            "local_width": 32, "fuse_width": 32},
              "discriminator": {"base_width": 64, "max_width": 512}},
}


def profile_configs(name: str) -> tuple:
    """(GeneratorConfig, DiscriminatorConfig) of a named profile (benchmarks, tests)."""
    if name not in PROFILES:
        raise ConfigError(f"unknown MR-GAN profile {name!r}; choose from {sorted(PROFILES)}")
    p = PROFILES[name]
    return GeneratorConfig(**p["generator"]), DiscriminatorConfig(**p["discriminator"])


def validate_gan_config(cfg: GanConfig) -> None:
    """Value checks that the type system cannot express; one-line ConfigErrors."""
    g, d, lo, o = cfg.generator, cfg.discriminator, cfg.loss, cfg.optim
    s = cfg.data.face_size
    if s < 16 or s % 8:
        raise ConfigError(f"data.face_size must be a multiple of 8 and >= 16, got {s}")
    if len(g.scales) != 3 or not all(0 < f <= 1 for f in g.scales) or not (
            g.scales[0] >= g.scales[1] >= g.scales[2]):
        raise ConfigError(f"generator.scales: expected three factors in (0, 1], highest "
                          f"resolution first (x_r1, x_r2, x_r3), got {list(g.scales)}")
    for key, v in (("generator.base_width", g.base_width), ("generator.num_stages", g.num_stages),
                   ("generator.blocks_per_stage", g.blocks_per_stage), ("generator.z_dim", g.z_dim),
                   ("generator.local_width", g.local_width), ("generator.fuse_width", g.fuse_width),
                   ("generator.se_reduction", g.se_reduction),
                   ("discriminator.base_width", d.base_width),
                   ("discriminator.global_downsamplings", d.global_downsamplings),
                   ("discriminator.local_downsamplings", d.local_downsamplings),
                   ("loss.pixel_every", lo.pixel_every), ("data.batch_size", cfg.data.batch_size)):
        if v < 1:
            raise ConfigError(f"{key} must be >= 1, got {v}")
    if lo.pixel_schedule not in ("g_every", "d_ratio"):
        raise ConfigError(f"loss.pixel_schedule must be g_every or d_ratio, got {lo.pixel_schedule!r}")
    from ..degrade import WIDTH_LAWS

    if g.level_law not in WIDTH_LAWS:
        raise ConfigError(f"generator.level_law must be one of {', '.join(WIDTH_LAWS)}, got {g.level_law!r}")
    if g.level_widths and g.level_band:
        raise ConfigError("generator.level_widths and generator.level_band are alternatives; set one")
    if g.level_widths and (len(g.level_widths) != 2 or not 1 <= g.level_widths[0] <= g.level_widths[1] <= s):
        raise ConfigError(f"generator.level_widths: expected [low, high] px with 1 <= low <= high <= "
                          f"data.face_size ({s}), got {list(g.level_widths)}")
    if g.level_band and (len(g.level_band) != 2 or not 0 < g.level_band[0] <= g.level_band[1]):
        raise ConfigError(f"generator.level_band: expected [low, high] eye-to-mouth px with "
                          f"0 < low <= high, got {list(g.level_band)}")
    if not 0 <= g.feather <= 0.5:
        raise ConfigError(f"generator.feather must lie in [0, 0.5], got {g.feather}")
    if len(lo.center_size) != 2 or not all(0 < v <= 112 for v in lo.center_size):
        raise ConfigError(f"loss.center_size: expected [width, height] within a 112 face, "
                          f"got {list(lo.center_size)}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas: expected two values in [0, 1), got {list(o.betas)}")
    if o.lr <= 0 or o.d_lr < 0 or o.max_steps < 1:
        raise ConfigError("optim.lr must be > 0, optim.d_lr >= 0 and optim.max_steps >= 1")
