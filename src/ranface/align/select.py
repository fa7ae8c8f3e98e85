"""Choosing faces: the paper's low-resolution criterion and the one-face-per-photo policy."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np

POLICIES = ("largest", "center", "score")


def eye_mouth_distance(landmarks5: np.ndarray) -> Union[float, np.ndarray]:
    """Distance from the eye midpoint to the mouth-corner midpoint, in the landmarks' pixels.

    ``landmarks5`` is (5, 2) (returns a float) or (N, 5, 2) (returns (N,)), ordered left
    eye, right eye, nose, left mouth, right mouth. This is the paper's (§4.1) face-size
    measure; unlike the box size it does not depend on the detector's box convention.
    """
    lm = np.asarray(landmarks5, dtype=np.float64)
    if lm.shape[-2:] != (5, 2):
        raise ValueError(f"expected (..., 5, 2) landmarks, got shape {lm.shape}")
    eyes = lm[..., 0:2, :].mean(axis=-2)
    mouth = lm[..., 3:5, :].mean(axis=-2)
    d = np.linalg.norm(eyes - mouth, axis=-1)
    return float(d) if d.ndim == 0 else d


def lr_select(distances: Sequence[float], lo: float = 10.0, hi: float = 30.0) -> np.ndarray:
    """Boolean mask of faces in the low-resolution band ``lo <= d <= hi`` (both inclusive).

    Inclusive on both ends so that the paper's "10 to 30 pixels" keeps faces measured at
    exactly 10 or 30 px; NaN distances are never selected.
    """
    if lo > hi:
        raise ValueError(f"lo ({lo}) must not exceed hi ({hi})")
    d = np.asarray(distances, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (d >= lo) & (d <= hi)


def fraction_outside(box: Sequence[float], image_shape: Tuple[int, ...]) -> float:
    """Fraction of a box's area (x1, y1, x2, y2 slice bounds) lying outside the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    h, w = image_shape[:2]
    area = max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
    if area <= 0:
        return 1.0
    inside = max(min(x2, w) - max(x1, 0.0), 0.0) * max(min(y2, h) - max(y1, 0.0), 0.0)
    return 1.0 - inside / area


def choose_face(boxes: np.ndarray, scores: np.ndarray, image_shape: Tuple[int, ...],
                policy: str = "largest") -> int:
    """Index of the face to keep when a photo should show one person.

    'largest': biggest box area; 'center': box centre nearest the image centre (LFW-style
    photos centred on their subject); 'score': highest detector score. Ties go to the
    lower index (the higher score, as detections come sorted by score).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(b) == 0 or len(b) != len(s):
        raise ValueError(f"need one score per box and at least one box, got {len(b)} boxes "
                         f"and {len(s)} scores")
    if policy == "score":
        return int(np.argmax(s))
    if policy == "largest":
        return int(np.argmax((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
    h, w = image_shape[:2]
    centres = (b[:, :2] + b[:, 2:]) / 2
    return int(np.argmin(np.linalg.norm(centres - np.array([w / 2, h / 2]), axis=1)))


# --------------------------------------------------------------------------- the LR band
# One definition of "the low-resolution band" and of the width <-> eye-to-mouth map: the
# demo selects its real LR pool with LR_BAND; the bicubic degrader's eye_mouth_range, the
# band each twin records (MR-GAN: its lowest stream x_r3) and the demo report use the map.

LR_BAND = (10.0, 30.0)  # paper §4.1: eye-midpoint to mouth-centre distance, original pixels


def eye_mouth_fraction(template: str = "arcface") -> float:
    """Eye-to-mouth distance of an aligned face as a fraction of its (square) width:
    0.363 for the ArcFace 112 template, 0.395 for the dlib 150 one. A face aligned with
    this template and shrunk to ``w`` px wide has an eye-to-mouth distance of
    ``w * eye_mouth_fraction(template)`` px."""
    from .templates import TEMPLATES

    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)}, got {template!r}")
    pts, base = TEMPLATES[template]
    return float(eye_mouth_distance(pts)) / base


def band_to_widths(band: Sequence[float], template: str = "arcface") -> Tuple[int, int]:
    """Face widths (px, rounded, >= 1) whose eye-to-mouth distances span ``band`` = (lo, hi)."""
    lo, hi = (float(v) for v in band)
    if not 0 < lo <= hi:
        raise ValueError(f"band must be (low, high) pixels with 0 < low <= high, got {list(band)}")
    r = eye_mouth_fraction(template)
    return max(1, int(round(lo / r))), max(1, int(round(hi / r)))


def widths_to_band(widths: Sequence[float], template: str = "arcface") -> Tuple[float, float]:
    """Eye-to-mouth distances (px) of faces shrunk to the widths ``(lo, hi)``."""
    r = eye_mouth_fraction(template)
    return float(widths[0]) * r, float(widths[1]) * r
