"""MR-GAN's global-local focused discriminators D_1..D_4 (paper §3.2, Fig. 2).

D_1 sees the whole face, D_2 / D_3 / D_4 the eyes / nose / mouth boxes of
:mod:`ranface.gan.regions` (the receptive regions of the local generator G_l). Each is a
PatchGAN (pix2pix): a map of real/fake scores, one per receptive field, with no sigmoid,
for the least-squares loss of Eq. 3 (LSGAN). Keys of the output dict:
``global`` (D_1), ``eyes`` (D_2), ``nose`` (D_3), ``mouth`` (D_4).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from .config import DiscriminatorConfig
from .regions import REGIONS, crop, region_boxes

__all__ = ["PatchDiscriminator", "MultiRegionDiscriminator", "DISCRIMINATOR_NAMES"]

# D_1..D_4 in the paper's order
DISCRIMINATOR_NAMES = ("global",) + REGIONS


class PatchDiscriminator(nn.Module):
    """``downsamplings`` 4x4 stride-2 convolutions (widths base, 2 base, ... capped at
    ``max_width``), one 3x3 convolution, then a 3x3 convolution to one score channel.
    InstanceNorm after all but the first layer, LeakyReLU(0.2). (N, 3, H, W) ->
    (N, 1, H / 2^d, W / 2^d)."""

    def __init__(self, base: int = 64, downsamplings: int = 3, max_width: int = 512):
        super().__init__()
        layers = [nn.Conv2d(3, base, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        w = base
        for _ in range(downsamplings - 1):
            nw = min(2 * w, max_width)
            layers += [nn.Conv2d(w, nw, 4, 2, 1, bias=False), nn.InstanceNorm2d(nw, affine=True),
                       nn.LeakyReLU(0.2, inplace=True)]
            w = nw
        nw = min(2 * w, max_width)
        layers += [nn.Conv2d(w, nw, 3, 1, 1, bias=False), nn.InstanceNorm2d(nw, affine=True),
                   nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(nw, 1, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MultiRegionDiscriminator(nn.Module):
    """D_1 (global) + D_2..D_4 (eyes, nose, mouth) in one module (one DDP wrapper, one
    optimizer). ``forward(images)`` -> {name: score map}."""

    def __init__(self, cfg: Optional[DiscriminatorConfig] = None, face_size: int = 112):
        super().__init__()
        cfg = cfg or DiscriminatorConfig()
        self.face_size = face_size
        self.boxes = region_boxes(face_size, cfg.template)
        self.nets = nn.ModuleDict({
            "global": PatchDiscriminator(cfg.base_width, cfg.global_downsamplings, cfg.max_width),
            **{r: PatchDiscriminator(cfg.base_width, cfg.local_downsamplings, cfg.max_width)
               for r in REGIONS}})

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        if images.shape[-2:] != (self.face_size, self.face_size):
            raise ValueError(f"discriminators expect {self.face_size}x{self.face_size} faces, "
                             f"got {tuple(images.shape[-2:])}")
        out = {"global": self.nets["global"](images)}
        for r in REGIONS:
            out[r] = self.nets[r](crop(images, self.boxes[r]))
        return out
