"""Fixed face regions of MR-GAN: the eyes, nose and mouth boxes of the local generator
G_l and of the local discriminators D_2..D_4 (paper §3.2: "center-cropped local patches
... obtained by the detected landmark and fixed"), and Eq. 5's centre patch.

Faces are aligned to the ArcFace 112x112 template (:data:`ranface.align.templates.
ARCFACE_112`: eyes at (38.3, 51.7) and (73.5, 51.5), nose tip (56.0, 71.7), mouth corners
(41.5, 92.4) and (70.7, 92.2)), so the regions sit at the same pixels in every face.
Boxes are ``(x0, y0, x1, y1)``, end-exclusive, defined at 112 and scaled with the face
size (rounded to whole pixels).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch

Box = Tuple[int, int, int, int]

REGIONS = ("eyes", "nose", "mouth")

# At 112x112. eyes: both eyes and the lower brows, 64x32 centred on the eye midpoint
# (55.9, 51.6); nose: bridge to tip, 32x32 around x = 56; mouth: both corners with
# ~9 px margin, 48x24 centred on y = 92. Multiples of 8 so that 2-3 stride-2 layers of
# the local networks divide them evenly at 112.
REGION_BOXES_112: Dict[str, Box] = {
    "eyes": (24, 36, 88, 68),
    "nose": (40, 52, 72, 84),
    "mouth": (32, 80, 80, 104),
}

# Eq. 5: "the 85 x 82 central patch of the attention map". Read as width x height,
# the order of Eq. 4's W x H x C.
CENTER_SIZE_112: Tuple[int, int] = (85, 82)


def region_boxes(size: int, template: str = "arcface") -> Dict[str, Box]:
    """The eyes / nose / mouth boxes for a square face of ``size`` pixels aligned to
    ``template`` ('arcface' or 'dlib'). The boxes are defined on the ArcFace 112 frame and
    carried to the other template by the similarity that maps the ArcFace five points
    onto that template's points at ``size`` (so they stay on the same facial parts)."""
    if size < 16:
        raise ValueError(f"face size must be >= 16 pixels, got {size}")
    f, tx, ty = _frame(size, template)
    out = {}
    for name, (x0, y0, x1, y1) in REGION_BOXES_112.items():
        a, b = round(x0 * f + tx), round(y0 * f + ty)
        # width and height scaled on their own so the box never collapses to 0 px
        w, h = max(2, round((x1 - x0) * f)), max(2, round((y1 - y0) * f))
        a, b = min(max(0, a), size - w), min(max(0, b), size - h)
        out[name] = (a, b, min(size, a + w), min(size, b + h))
    return out


def _frame(size: int, template: str) -> Tuple[float, float, float]:
    """Scale and translation from the ArcFace-112 frame to ``template`` at ``size``."""
    if template == "arcface":
        return size / 112.0, 0.0, 0.0
    import numpy as np

    from ..align.templates import ARCFACE_112, template_for
    from ..align.transform import estimate_similarity

    m = estimate_similarity(np.asarray(ARCFACE_112, float), template_for((size, size), template))
    scale = float(np.hypot(m[0, 0], m[1, 0]))  # rotation between the templates is ~0
    return scale, float(m[0, 2]), float(m[1, 2])


def crop(x: torch.Tensor, box: Box) -> torch.Tensor:
    """The ``box`` region of a batch (N, C, H, W) (a view)."""
    x0, y0, x1, y1 = box
    return x[..., y0:y1, x0:x1]


def paste(patch: torch.Tensor, box: Box, size: Tuple[int, int]) -> torch.Tensor:
    """``patch`` placed at ``box`` on a zero canvas of ``size`` = (H, W); differentiable."""
    x0, y0, x1, y1 = box
    h, w = size
    return torch.nn.functional.pad(patch, (x0, w - x1, y0, h - y1))


def box_mask(box: Box, size: Tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, H, W) mask, 1 inside ``box``."""
    m = torch.zeros(1, 1, *size, device=device, dtype=dtype)
    x0, y0, x1, y1 = box
    m[..., y0:y1, x0:x1] = 1
    return m


def feather_mask(box: Box, size: Tuple[int, int], feather: float, device=None,
                 dtype=torch.float32) -> torch.Tensor:
    """(1, 1, H, W) mask of ``box`` whose edges fade: 1 in the interior, falling to 0 at the
    box border along a raised cosine over ``feather`` x the box's shorter side (pixel
    centres), 0 outside. ``feather = 0`` is :func:`box_mask`. Blending a patch with
    ``m * patch + (1 - m) * face`` then leaves no step at the border (a seamless paste)."""
    if feather <= 0:
        return box_mask(box, size, device, dtype)
    import math

    x0, y0, x1, y1 = box
    h, w = size
    ramp = max(1.0, feather * min(x1 - x0, y1 - y0))

    def axis(n: int, a: int, b: int) -> torch.Tensor:
        c = torch.arange(n, dtype=torch.float64) + 0.5
        d = torch.minimum(c - a, b - c).clamp(min=0) / ramp
        return 0.5 - 0.5 * torch.cos(math.pi * d.clamp(max=1.0))

    m = axis(h, y0, y1)[:, None] * axis(w, x0, x1)[None, :]
    return m.to(device=device, dtype=dtype)[None, None]


def center_box(size: int, center_size: Tuple[int, int] = CENTER_SIZE_112) -> Box:
    """Eq. 5's centre patch for a ``size`` face: ``center_size`` = (width, height) at 112,
    scaled with the face size, centred (the odd pixel of slack goes right / down)."""
    f = size / 112.0
    w = min(size, max(1, round(center_size[0] * f)))
    h = min(size, max(1, round(center_size[1] * f)))
    x0, y0 = (size - w) // 2, (size - h) // 2
    return (x0, y0, x0 + w, y0 + h)


def attention_target(size: int, center_size: Tuple[int, int] = CENTER_SIZE_112,
                     device=None) -> torch.Tensor:
    """Eq. 5's target for G^A as (1, 1, S, S): 0 on the centre patch, 1 on the edge."""
    return 1.0 - box_mask(center_box(size, center_size), (size, size), device)
