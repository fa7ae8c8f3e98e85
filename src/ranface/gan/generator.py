"""MR-GAN generator G (paper §3.2, Fig. 2-3; Eq. 1).

Paper name -> code name:

* x, x_r1, x_r2, x_r3 -> ``x`` and :func:`multi_resolution_inputs` (``GenOutput.x_r1..3``):
  x shrunk to ``scales`` x face size (default 1/2, 1/4, 1/8: 56, 28, 14 px at 112) with
  :func:`ranface.degrade.down_up` and resized back, three degrees of blur.
* the three parallel sub-networks of the global stream -> :class:`StreamEncoder`
  (three strided convolutions, S -> S/8) and the per-stage residual blocks.
* fusion unit (Fig. 3: SE block, channel concatenation into the lower-resolution
  stream, SE block) -> :class:`FusionUnit`.
* z -> ``z`` (``z_dim``); injected by :class:`NoiseInjection` (see below).
* spatial attention, Eq. 1: ``G_g = G_A * x_r3 + (1 - G_A) * G_R`` ->
  :func:`attention_blend`, ``GenOutput.G_A`` (sigmoid), ``GenOutput.G_R``: "the output
  residual face", with ``residual`` (default) ``clamp(x_r3 + R)`` where R, the last
  convolution's output, starts at zero; else ``tanh`` of it.
* local generator G_l (three encoder-decoders: eyes, nose, mouth of x_r3) ->
  :class:`LocalGenerator`; regions from :mod:`ranface.gan.regions`.
* the two 1x1 convolutions merging G_l's patches with G_g into G(x) -> ``MRGenerator.merge``;
  each patch first fades into G_g under a feathered mask (:func:`ranface.gan.regions.
  feather_mask`, ``feather``), so the merge sees no step at a box border (no seams).
  With ``residual``, the patches are their x_r3 crop plus a zero-started residual and
  G(x) is clamped to [-1, 1] instead of tanh-squashed, so G(x) = x_r3 exactly at
  initialisation: training starts from bicubic down-sampling at the level's width and
  learns what real LR faces add to it (:meth:`MRGenerator.init_residual`).
* "z randomly selects one resolution" (abstract) -> ``level_widths`` / ``level_band``:
  per face a width w for x_r3 (``level_law``: uniform, as every other degrader draws its
  widths, or log-uniform; :meth:`MRGenerator.sample_levels`);
  x_r2, x_r1 are shrunk to w times the ratios of ``scales``; the level enters G beside z
  (:func:`level_code`), and L_pixel (Eq. 4, towards x_r3 at that width) makes G express it.

Global-stream topology (widths: ``c = 4 * base_width`` after each encoder; K =
``num_stages``, B = ``blocks_per_stage``). With F_r^k the output of stream r's residual
blocks of stage k::

    F_r1^0, F_r2^0, F_r3^0 = Enc_1(x_r1), Enc_2(x_r2), Enc_3(x_r3)          (c each, S/8)
    stage k = 1..K:
        F_r1^k = Res(F_r1^{k-1})                                            c -> c
        F_r2^k = Res(H_r2^{k-1})        (H_r2^0 = F_r2^0)                   c or 2c -> c
        F_r3^k = Res(H_r3^{k-1})        (H_r3^0 = F_r3^0)                   c or 3c -> c
        H_r2^k = FU(F_r1^k -> F_r2^k) = SE(cat(a_k * SE(F_r1^k), SE(F_r2^k)))    2c
        H_r3^k = FU(H_r2^k -> F_r3^k) = SE(cat(b_k * SE(H_r2^k), SE(F_r3^k)))    3c
    decoder(cat(H_r3^K, z broadcast)) -> G_A, G_R

so after every stage the r1 stream flows into r2 and the fused r2 flows into r3 (the
lowest resolution), "with the deeper channel" (2c, 3c); the first residual block of the
next stage projects the deeper input back to c (1x1 shortcut).

Noise z ("inject the vector of random noise z to ... select and simulate different
degrees of resolution degradation randomly"): a small MLP maps z to per-stage gates
a_k, b_k in (0, 1) per sample that scale how much higher-resolution detail enters each
fusion unit (the degradation level), and z is also broadcast and concatenated to the
decoder input and to each local encoder-decoder input (texture variation).

All normalisation is InstanceNorm (no batch statistics: the generator behaves the same
in training, in single-image synthesis and under DDP).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..degrade import down_up, sample_widths
from .config import GeneratorConfig
from .regions import REGIONS, crop, feather_mask, paste, region_boxes

__all__ = ["GenOutput", "MRGenerator", "FusionUnit", "SEBlock", "LocalGenerator",
           "attention_blend", "multi_resolution_inputs", "level_inputs", "level_range", "level_code",
           "sample_widths",
           "generator_package", "load_generator", "GENERATOR_FORMAT"]


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.InstanceNorm2d(cout, affine=True), nn.ReLU(inplace=True))


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al.): channel weights from globally pooled features."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean(dim=(2, 3)))
        return x * w[:, :, None, None]


class ResBlock(nn.Module):
    """conv-IN-ReLU-conv-IN plus shortcut (1x1 projection when the width changes)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.InstanceNorm2d(cout, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.InstanceNorm2d(cout, affine=True))
        self.short = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class StreamEncoder(nn.Module):
    """One global sub-network's encoder: three strided 3x3 convolutions
    (S -> S/2 -> S/4 -> S/8; widths b, 2b, 4b)."""

    def __init__(self, base: int):
        super().__init__()
        self.net = nn.Sequential(_conv(3, base, 3, 2), _conv(base, 2 * base, 3, 2),
                                 _conv(2 * base, 4 * base, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FusionUnit(nn.Module):
    """Fig. 3: SE on each input, channel concatenation (the higher-resolution map flows
    into the lower-resolution stream), SE on the result: C_hi + C_lo channels out.
    ``gate`` (N,) scales the higher-resolution contribution (z's degradation level)."""

    def __init__(self, c_hi: int, c_lo: int, reduction: int = 4):
        super().__init__()
        self.se_hi = SEBlock(c_hi, reduction)
        self.se_lo = SEBlock(c_lo, reduction)
        self.se_out = SEBlock(c_hi + c_lo, reduction)

    def forward(self, f_hi: torch.Tensor, f_lo: torch.Tensor,
                gate: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.se_hi(f_hi)
        if gate is not None:
            h = h * gate.view(-1, 1, 1, 1).to(h.dtype)
        return self.se_out(torch.cat([h, self.se_lo(f_lo)], dim=1))


class NoiseInjection(nn.Module):
    """z -> per-stage gates (a_k, b_k) in (0, 1) for the r1->r2 and r2->r3 fusion units."""

    def __init__(self, z_dim: int, num_stages: int, hidden: int = 32):
        super().__init__()
        self.num_stages = num_stages
        self.mlp = nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 2 * num_stages))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, z_dim) -> (N, num_stages, 2)."""
        return torch.sigmoid(self.mlp(z)).view(-1, self.num_stages, 2)


def _broadcast(z: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return z[:, :, None, None].to(like.dtype).expand(-1, -1, like.shape[2], like.shape[3])


class LocalGenerator(nn.Module):
    """One of G_l's three encoder-decoders: a region crop of x_r3 (+ z broadcast) ->
    refined patch of the same size (tanh). Two stride-2 levels with a skip connection;
    the decoder resizes to the skip's exact size, so any crop size works."""

    def __init__(self, width: int, z_dim: int, residual: bool = False):
        super().__init__()
        w = width
        self.residual = residual
        self.inc = _conv(3 + z_dim, w, 3)
        self.down1 = _conv(w, 2 * w, 3, 2)
        self.down2 = _conv(2 * w, 4 * w, 3, 2)
        self.mid = ResBlock(4 * w, 4 * w)
        self.up1 = _conv(4 * w + 2 * w, 2 * w, 3)
        self.up2 = _conv(2 * w + w, w, 3)
        self.out = nn.Conv2d(w, 3, 3, 1, 1)

    def forward(self, patch: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        e0 = self.inc(torch.cat([patch, _broadcast(z, patch)], dim=1))
        e1 = self.down1(e0)
        m = self.mid(self.down2(e1))
        d1 = self.up1(torch.cat([F.interpolate(m, size=e1.shape[-2:], mode="nearest"), e1], 1))
        d0 = self.up2(torch.cat([F.interpolate(d1, size=e0.shape[-2:], mode="nearest"), e0], 1))
        if self.residual:  # the crop plus a learned residual (self.out starts at zero)
            return (patch + self.out(d0).to(patch.dtype)).clamp(-1.0, 1.0)
        return torch.tanh(self.out(d0))


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the default (NCHW) layout. G's 1- and 3-channel image maps are blended in
    it: with G in channels_last, a (N, 1, H, W) x (N, 3, H, W) broadcast product runs
    ~20x slower in bf16 on the CPU than in NCHW (docs/performance.md, issue 16 eighth
    round). A no-op for NCHW tensors (fp32 runs), so their values are unchanged."""
    return t.contiguous()


def attention_blend(G_A: torch.Tensor, x_r3: torch.Tensor, G_R: torch.Tensor) -> torch.Tensor:
    """Eq. 1: G_g(x, z) = G^A(x, z) * x_r3 + (1 - G^A(x, z)) * G^R(x, z).

    G^A = 1 keeps the pixel of x_r3 (background), G^A = 0 takes the generated face G^R.
    """
    return G_A * x_r3 + (1.0 - G_A) * G_R


def multi_resolution_inputs(x: torch.Tensor, scales: Sequence[float]
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_r1, x_r2, x_r3: ``x`` shrunk to ``scale * width`` pixels (bicubic, antialiased)
    and resized back to its size (§3.2 "three degrees of blur")."""
    w = x.shape[-1]
    with torch.no_grad():
        outs = [down_up(x.float(), max(1, round(w * s))).to(x.dtype) for s in scales]
    return outs[0], outs[1], outs[2]


def level_range(cfg: GeneratorConfig, face_size: int) -> Optional[Tuple[int, int]]:
    """The [lo, hi] widths (px) z's level selects x_r3's width from; None: fixed ``scales``."""
    if cfg.level_band:
        from ..align.select import band_to_widths

        lo, hi = band_to_widths(cfg.level_band, cfg.template)
    elif cfg.level_widths:
        lo, hi = int(cfg.level_widths[0]), int(cfg.level_widths[1])
    else:
        return None
    return max(1, min(lo, face_size)), max(1, min(hi, face_size))


def level_code(widths: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Widths (N,) -> (N, 1) in [-1, 1]: the position of log(w) in [log lo, log hi]."""
    if hi <= lo:
        return torch.zeros(widths.shape[0], 1, device=widths.device)
    t = (widths.float().log() - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (2.0 * t - 1.0).view(-1, 1)


def level_inputs(x: torch.Tensor, widths: torch.Tensor, scales: Sequence[float]
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_r1, x_r2, x_r3 per face: x_r3 shrunk to ``widths[i]`` px, x_r2 / x_r1 to that width
    times scales[1] / scales[2] and scales[0] / scales[2] (capped at the face size, where
    the face is kept as it is); bicubic, antialiased, resized back."""
    S = x.shape[-1]
    ratios = (scales[0] / scales[2], scales[1] / scales[2], 1.0)
    outs = []
    with torch.no_grad():
        xf = x.float()
        for ratio in ratios:
            r = torch.empty_like(xf)
            want = [min(S, max(1, int(round(float(w) * ratio)))) for w in widths.tolist()]
            for w in sorted(set(want)):
                idx = torch.tensor([i for i, v in enumerate(want) if v == w], device=x.device)
                r[idx] = xf[idx] if w >= S else down_up(xf[idx], w)
            outs.append(r.to(x.dtype))
    return outs[0], outs[1], outs[2]


@dataclass
class GenOutput:
    """Everything G computes; ``fake`` is G(x)."""

    fake: torch.Tensor
    G_A: torch.Tensor  # (N, 1, S, S) attention map in [0, 1]
    G_R: torch.Tensor  # (N, 3, S, S) residual face in [-1, 1]
    G_g: torch.Tensor  # (N, 3, S, S) global-stream output, Eq. 1
    x_r1: torch.Tensor
    x_r2: torch.Tensor
    x_r3: torch.Tensor
    z: torch.Tensor
    local: Dict[str, torch.Tensor] = field(default_factory=dict)  # G_l's refined patches
    widths: Optional[torch.Tensor] = None  # (N,) x_r3's width per face when z selects a level


class MRGenerator(nn.Module):
    """MR-GAN's generator G: aligned HR face x (N, 3, S, S) in [-1, 1] and noise z ->
    realistic LR face G(x) (N, 3, S, S) in [-1, 1] (S = ``face_size``)."""

    def __init__(self, cfg: Optional[GeneratorConfig] = None, face_size: int = 112):
        super().__init__()
        cfg = cfg or GeneratorConfig()
        if face_size % 8 or face_size < 16:
            raise ValueError(f"face_size must be a multiple of 8 and >= 16, got {face_size}")
        self.cfg = cfg
        self.face_size = face_size
        self.scales = tuple(float(s) for s in cfg.scales)
        b, K, B, r = cfg.base_width, cfg.num_stages, cfg.blocks_per_stage, cfg.se_reduction
        c = 4 * b
        self.z_dim = cfg.z_dim
        self.levels = level_range(cfg, face_size)
        cond = cfg.z_dim + (1 if self.levels else 0)  # z, and the level code when z selects one
        self.enc = nn.ModuleList([StreamEncoder(b) for _ in range(3)])

        def stage(cin: int) -> nn.Sequential:
            return nn.Sequential(ResBlock(cin, c), *[ResBlock(c, c) for _ in range(B - 1)])

        # stage k's blocks of streams r1, r2, r3; their inputs deepen after the 1st fusion
        self.res_r1 = nn.ModuleList([stage(c) for _ in range(K)])
        self.res_r2 = nn.ModuleList([stage(c if k == 0 else 2 * c) for k in range(K)])
        self.res_r3 = nn.ModuleList([stage(c if k == 0 else 3 * c) for k in range(K)])
        self.fuse_12 = nn.ModuleList([FusionUnit(c, c, r) for _ in range(K)])
        self.fuse_23 = nn.ModuleList([FusionUnit(2 * c, c, r) for _ in range(K)])
        self.noise = NoiseInjection(cond, K)
        # decoder: S/8 -> S, then the two heads of Eq. 1
        self.dec_in = _conv(3 * c + cond, c, 3)
        self.dec = nn.ModuleList([_conv(c, 2 * b, 3), _conv(2 * b, b, 3), _conv(b, b, 3)])
        self.head_R = nn.Conv2d(b, 3, 3, 1, 1)
        self.head_A = nn.Conv2d(b, 1, 3, 1, 1)
        # local generator G_l
        self.boxes = region_boxes(face_size, cfg.template)
        self.residual = bool(cfg.residual)
        self.local = nn.ModuleDict({n: LocalGenerator(cfg.local_width, cond, self.residual) for n in REGIONS})
        # G_g (3) + three patches faded into G_g (9) + their masks (3) -> two 1x1 convs -> G(x)
        self.feather = float(cfg.feather)
        masks = torch.cat([feather_mask(self.boxes[n], (face_size, face_size), self.feather)
                           for n in REGIONS], 1)
        self.register_buffer("region_masks", masks, persistent=False)
        self.merge = nn.Sequential(nn.Conv2d(15, cfg.fuse_width, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(cfg.fuse_width, 3, 1))
        self._init_merge()
        if self.residual:
            self.init_residual()

    @torch.no_grad()
    def _init_merge(self) -> None:
        """Start the two 1x1 convolutions as a pass-through of G_g (G(x) = tanh(G_g) plus
        a small random term from G_l's patches): from a random start the output colours
        are arbitrary mixes of G_g (often inverted) that training must first undo (on real
        faces L_pixel fell 0.16 -> 0.06 in 24 tiny-width steps with this start, and only
        0.31 -> 0.25 in 40 without). Hidden units 0-5 carry relu(+G_g) and relu(-G_g);
        the second layer recombines them. Needs ``fuse_width >= 6``."""
        first, second = self.merge[0], self.merge[2]
        if first.out_channels < 6:
            return
        first.bias[:6].zero_()
        second.weight.mul_(0.1)  # the other hidden units (G_l's patches) start as a small term
        second.bias.zero_()
        for c in range(3):
            first.weight[c].zero_()
            first.weight[c + 3].zero_()
            first.weight[c, c] = 1.0
            first.weight[c + 3, c] = -1.0
            second.weight[:, c].zero_()
            second.weight[:, c + 3].zero_()
            second.weight[c, c] = 1.0
            second.weight[c, c + 3] = -1.0

    @torch.no_grad()
    def init_residual(self) -> None:
        """Residual start: G^R's and G_l's last convolutions at zero (G^R = x_r3, each patch
        = its x_r3 crop) and the merge an exact pass-through of G_g (the hidden units that
        carry G_l's patches start with zero output weights; they still learn, since their
        activations are not zero). With the clamp at the end, G(x) = x_r3 at step 0 (exactly
        when ``fuse_width`` >= 6, the pass-through of :meth:`_init_merge`)."""
        nn.init.zeros_(self.head_R.weight)
        nn.init.zeros_(self.head_R.bias)
        for m in self.local.values():
            nn.init.zeros_(m.out.weight)
            nn.init.zeros_(m.out.bias)
        second = self.merge[2]
        if self.merge[0].out_channels >= 6:
            second.weight[:, 6:].zero_()

    def sample_z(self, n: int, generator: Optional[torch.Generator] = None,
                 device: Optional[torch.device] = None) -> torch.Tensor:
        """z ~ N(0, I), (n, z_dim), drawn from ``generator`` (on its device)."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(n, self.z_dim, generator=generator, device=gdev)
        return z.to(device) if device is not None else z

    def sample_levels(self, n: int, generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        """Widths (n,) of x_r3 in :attr:`levels`, by ``level_law`` (None without levels)."""
        if self.levels is None:
            return None
        return sample_widths(n, *self.levels, generator=generator, law=self.cfg.level_law)

    def global_stream(self, x_r: Sequence[torch.Tensor], z: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """x_r1..x_r3, z -> (G^A in [0, 1] (sigmoid), G^R in [-1, 1]: clamp(x_r3 + R) with
        ``residual``, else tanh(R))."""
        f1, h2, h3 = (enc(xr) for enc, xr in zip(self.enc, x_r))
        gates = self.noise(z)
        for k in range(len(self.res_r1)):
            f1 = self.res_r1[k](f1)
            f2 = self.res_r2[k](h2)
            f3 = self.res_r3[k](h3)
            h2 = self.fuse_12[k](f1, f2, gates[:, k, 0])
            h3 = self.fuse_23[k](h2, f3, gates[:, k, 1])
        y = self.dec_in(torch.cat([h3, _broadcast(z, h3)], dim=1))
        for layer in self.dec:
            y = layer(F.interpolate(y, scale_factor=2, mode="nearest"))
        R = self.head_R(y)
        G_R = (x_r[2].to(R.dtype) + R).clamp(-1.0, 1.0) if self.residual else torch.tanh(R)
        return torch.sigmoid(self.head_A(y)), G_R

    def merge_inputs(self, G_g: torch.Tensor, local: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The 15 channels the two 1x1 convolutions see: G_g, each G_l patch placed on the
        face, and the region masks. With ``feather`` > 0 each patch fades into G_g under its
        feathered mask (``m * patch + (1 - m) * G_g``), so every channel is continuous
        across the box border (no seams); with 0 the patches sit on a zero canvas."""
        n, _, h, w = G_g.shape
        pasted = [_nchw(paste(local[r], self.boxes[r], (h, w)).to(G_g.dtype)) for r in REGIONS]
        masks = _nchw(self.region_masks.to(G_g.dtype)).expand(n, -1, -1, -1)
        if self.feather > 0:
            pasted = [masks[:, i:i + 1] * p + (1.0 - masks[:, i:i + 1]) * G_g for i, p in enumerate(pasted)]
        return torch.cat([G_g, *pasted, masks], 1)

    @torch.compiler.disable
    def inputs(self, x: torch.Tensor, z: torch.Tensor, generator: Optional[torch.Generator] = None,
               widths: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """x_r1, x_r2, x_r3 (no grad), the condition (z, and the level code with levels) and
        the widths (N,) or None. Run eagerly under ``torch.compile``: the per-face resizes
        group faces by their drawn widths, and a compiled graph would specialise on (and
        recompile for) every new set of widths."""
        n = x.shape[0]
        if self.levels is None:
            return (*multi_resolution_inputs(x, self.scales), z, None)
        if widths is None:
            widths = self.sample_levels(n, generator)
        widths = torch.as_tensor(widths).long().view(-1).cpu()
        if widths.shape[0] != n:
            raise ValueError(f"widths must hold one width per face ({n}), got {tuple(widths.shape)}")
        cond = torch.cat([z, level_code(widths, *self.levels).to(z.device, z.dtype)], 1)
        return (*level_inputs(x, widths, self.scales), cond, widths)

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None,
                widths: Optional[torch.Tensor] = None) -> GenOutput:
        """G(x, z). With levels, ``widths`` (N,) picks x_r3's width per face (drawn from
        ``generator`` after z when None)."""
        n, c, h, w = x.shape
        if c != 3 or h != self.face_size or w != self.face_size:
            raise ValueError(f"MRGenerator expects (N, 3, {self.face_size}, {self.face_size}) "
                             f"faces, got {tuple(x.shape)}")
        if z is None:
            z = self.sample_z(n, generator, x.device)
        if z.shape != (n, self.z_dim):
            raise ValueError(f"z must be ({n}, {self.z_dim}), got {tuple(z.shape)}")
        x_r1, x_r2, x_r3, cond, widths = self.inputs(x, z.to(x.device), generator, widths)
        G_A, G_R = self.global_stream((x_r1, x_r2, x_r3), cond)
        G_g = attention_blend(_nchw(G_A), _nchw(x_r3.to(G_A.dtype)), _nchw(G_R))
        local = {r: self.local[r](crop(x_r3, self.boxes[r]), cond) for r in REGIONS}
        merged = self.merge(self.merge_inputs(G_g, local))
        fake = merged.clamp(-1.0, 1.0) if self.residual else torch.tanh(merged)
        return GenOutput(fake=fake, G_A=G_A, G_R=G_R, G_g=G_g, x_r1=x_r1, x_r2=x_r2, x_r3=x_r3,
                         z=z, local=local, widths=widths)


# ------------------------------------------------------------------ generator.pt
GENERATOR_FORMAT = "ranface-mrgan/1"


def generator_package(G: nn.Module, config: Optional[Dict] = None, step: int = 0) -> Dict:
    """What ``generator.pt`` holds: weights + the generator config to rebuild G + face size."""
    from dataclasses import asdict

    from ..train.distributed import unwrap

    g = unwrap(G)
    return {"format": GENERATOR_FORMAT, "generator": asdict(g.cfg), "face_size": int(g.face_size),
            "state_dict": {k: v.detach().cpu() for k, v in g.state_dict().items()},
            "config": config or {}, "step": int(step)}


def load_generator(path: str, device: Any = "cpu") -> Tuple["MRGenerator", Dict]:
    """Rebuild G from ``generator.pt``, a ``train-gan`` run directory (its generator.pt,
    else its latest checkpoint) or a ``train-gan`` training checkpoint. Eval mode, frozen.

    Anything else (a recognition model.pt, a checkpoint whose weights do not fit the
    config stored with them) is a one-line :class:`~ranface.errors.CheckpointError`.
    """
    import os

    from ..config import from_dict
    from ..errors import CheckpointError, ConfigError
    from ..train.checkpoint import CheckpointManager, load_checkpoint, load_state_strict

    if not path:
        raise CheckpointError(None, "no MR-GAN generator given (options.checkpoint=<generator.pt "
                              "or train-gan run dir>)")
    if os.path.isdir(path):
        cand = os.path.join(path, "generator.pt")
        target = cand if os.path.exists(cand) else CheckpointManager(
            os.path.join(path, "checkpoints")).latest()
        if target is None:
            raise CheckpointError(path, "folder holds no generator.pt and no checkpoints/")
        path = target
    state = load_checkpoint(path)
    if state.get("format") == GENERATOR_FORMAT:
        gcfg, size, sd = state.get("generator", {}), state.get("face_size"), state.get("state_dict")
    elif "modules" in state and "generator" in state.get("modules", {}):
        cfg = state.get("config", {})
        gcfg, size = cfg.get("generator", {}), cfg.get("data", {}).get("face_size")
        sd = state["modules"]["generator"]
    else:
        kind = "a recognition model" if state.get("format") == "ranface-model/1" else "something else"
        raise CheckpointError(path, f"not an MR-GAN generator checkpoint (it holds {kind}; "
                              "expected generator.pt or a train-gan checkpoint)")
    if isinstance(gcfg, dict):  # saved before these options existed: what G was then
        gcfg = {"residual": False, "level_law": "log", **gcfg}
    try:
        cfg_obj = from_dict(GeneratorConfig, gcfg)
    except ConfigError as exc:
        raise CheckpointError(path, f"generator config stored in the checkpoint is invalid: {exc}") from None
    if not isinstance(size, int) or size < 16 or size % 8:
        raise CheckpointError(path, f"invalid face size {size!r} stored in the checkpoint")
    G = MRGenerator(cfg_obj, face_size=size)
    load_state_strict(G, sd, path, what="MR-GAN generator")
    G.eval().to(device)
    for p in G.parameters():
        p.requires_grad_(False)
    return G, {"source": path, "face_size": size, "generator": gcfg, "step": state.get("step")}
