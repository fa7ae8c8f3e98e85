"""Five-point landmark templates (left eye, right eye, nose, left/right mouth corner).

Coordinates are (x, y) pixel centres (see :mod:`.transform`).

* ``arcface``: insightface's ``arcface_dst`` for 112x112 crops, the alignment that
  ArcFace-family recognition models (and the paper's 112x112 faces) are trained on.
* ``dlib``: where MTCNN's five points fall, on average, inside a dlib
  ``get_face_chip`` 150x150 chip (padding 0.25), measured over 1,991 LFW chips
  (shared/data/README.md); a similarity map of MTCNN points onto it approximates dlib's
  alignment, which the face-api ResNet-29 expects.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]])
DLIB_150 = np.array([[47.81, 45.97], [102.28, 45.69], [74.77, 77.83],
                     [51.21, 105.13], [98.59, 105.14]])
# Each template with the (square) frame side it is defined for.
TEMPLATES: Dict[str, Tuple[np.ndarray, int]] = {"arcface": (ARCFACE_112, 112),
                                                "dlib": (DLIB_150, 150)}


def template_for(size: Tuple[int, int] = (112, 112), kind: str = "arcface") -> np.ndarray:
    """The ``kind`` template for an output of ``size`` = (height, width), as (5, 2).

    The template is scaled by height / base (base = 112 or 150) about the frame's outer
    corner (-0.5, -0.5), exactly as resizing an aligned crop would move it, so the face
    keeps its aspect ratio and fills the same fraction of the height; then it is shifted
    horizontally to
    stay centred: x += (width - base * scale) / 2. For 112x96 this is insightface's
    convention (its 96-wide template is the 112 one shifted 8 px left); for a square
    size it is a plain scaling of the template.
    """
    if kind not in TEMPLATES:
        raise ValueError(f"template kind must be one of {sorted(TEMPLATES)}, got {kind!r}")
    h, w = (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"template size must be positive, got {size}")
    pts, base = TEMPLATES[kind]
    scale = h / base
    # Scale about the frame's outer corner (-0.5, -0.5) in pixel-centre coordinates, so
    # the template keeps its place relative to the image edges at any resolution.
    out = (pts + 0.5) * scale - 0.5
    out[:, 0] += (w - base * scale) / 2
    return out
