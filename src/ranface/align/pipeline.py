"""Detect, choose and align faces: the library behind ``ranface prepare``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import ConfigError
from .mtcnn import MTCNN, Detections
from .select import POLICIES, choose_face, eye_mouth_distance
from .templates import TEMPLATES, template_for
from .transform import BORDERS, estimate_similarity, warp_face

NO_FACE = "no face detected"
FALLBACK = "center-crop fallback"


@dataclass(frozen=True)
class AlignedFace:
    """One detected face warped onto the template."""

    face: np.ndarray          # HxWx3 uint8, the aligned crop
    box: np.ndarray           # (4,) x1 y1 x2 y2 slice bounds in the original image
    score: float              # MTCNN O-Net probability
    landmarks: np.ndarray     # (5, 2) original-image pixels
    eye_mouth_px: float       # eye-midpoint to mouth-midpoint distance, original pixels
    matrix: np.ndarray        # (2, 3) original image -> aligned crop


@dataclass(frozen=True)
class AlignResult:
    """The one face of a photo; ``face`` is None (and ``reason`` says why) on failure.

    With the centre-crop fallback, ``face`` is set, ``reason`` is 'center-crop fallback',
    ``box`` is the cropped region and score/landmarks/eye_mouth_px are None. ``matrix``
    maps original-image pixels to the returned face.
    """

    face: Optional[np.ndarray]
    box: Optional[np.ndarray]
    score: Optional[float]
    landmarks: Optional[np.ndarray]
    eye_mouth_px: Optional[float]
    reason: Optional[str]
    matrix: Optional[np.ndarray] = None

    @property
    def ok(self) -> bool:
        """A face was detected and aligned (not a fallback crop)."""
        return self.face is not None and self.reason is None


class FaceAligner:
    """MTCNN detection + 5-point similarity alignment to a template.

    ``template``/``size``: 'arcface' (insightface 112x112) or 'dlib' (150x150 chip)
    points, scaled by :func:`template_for` to ``size`` = (height, width). ``policy``
    picks the face of a photo ('largest', 'center', 'score'); only detections with
    score >= ``min_score`` count. ``pad_ratio``, ``upscales``, ``upscale_new_only`` and
    ``min_face_size`` go to :class:`MTCNN`. ``center_crop_fallback`` returns, when no face is found, the
    central square of side ``fallback_fraction * min(h, w)`` resized to ``size``
    (0.5 fits an LFW 250x250 photo's face to about the template's scale). ``border``
    fills warped pixels outside the photo ('constant' black, 'replicate', 'reflect').
    A ready ``detector`` may be passed to share one MTCNN between aligners.
    """

    def __init__(self, template: str = "arcface", size: Tuple[int, int] = (112, 112),
                 policy: str = "largest", pad_ratio: float = 0.5,
                 upscales: Sequence[float] = (1,), min_score: float = 0.9,
                 center_crop_fallback: bool = False, border: str = "constant",
                 min_face_size: float = 20.0, fallback_fraction: float = 0.5,
                 weights_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
                 device: Union[str, torch.device] = "cpu",
                 detector: Optional[MTCNN] = None, upscale_new_only: bool = False) -> None:
        if template not in TEMPLATES:
            raise ConfigError(f"template must be one of {sorted(TEMPLATES)}, got {template!r}")
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {POLICIES}, got {policy!r}")
        if border not in BORDERS:
            raise ConfigError(f"border must be one of {BORDERS}, got {border!r}")
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"size must be (height, width) > 0, got {size}")
        if not 0 <= min_score <= 1:
            raise ConfigError(f"min_score must lie in [0, 1], got {min_score}")
        if not 0 < fallback_fraction <= 1:
            raise ConfigError(f"fallback_fraction must lie in (0, 1], got {fallback_fraction}")
        self.size = (int(size[0]), int(size[1]))
        self.template = template
        self.points = template_for(self.size, template)
        self.policy = policy
        self.min_score = float(min_score)
        self.center_crop_fallback = bool(center_crop_fallback)
        self.fallback_fraction = float(fallback_fraction)
        self.border = border
        self.detector = detector if detector is not None else MTCNN(
            weights_dir=weights_dir, min_face_size=min_face_size, pad_ratio=pad_ratio,
            upscales=upscales, device=device, upscale_new_only=upscale_new_only)

    def detect(self, img: np.ndarray) -> Detections:
        """MTCNN detections with score >= ``min_score``, best first."""
        det = self.detector.detect(img)
        return det.take(np.flatnonzero(det.scores >= self.min_score))

    def warp(self, img: np.ndarray, landmarks: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Align ``img`` by its (5, 2) ``landmarks``; returns (face, 2x3 matrix)."""
        m = estimate_similarity(landmarks, self.points)
        return warp_face(_rgb(img), m, self.size, self.border), m

    def align(self, img: np.ndarray) -> AlignResult:
        """Detect, choose one face by ``policy`` and align it."""
        img = _rgb(img)
        det = self.detect(img)
        if not len(det):
            if self.center_crop_fallback:
                face, box, m = self._centre_crop(img)
                return AlignResult(face, box, None, None, None, FALLBACK, m)
            return AlignResult(None, None, None, None, None, NO_FACE)
        i = choose_face(det.boxes, det.scores, img.shape, self.policy)
        face, m = self.warp(img, det.landmarks[i])
        return AlignResult(face, det.boxes[i], float(det.scores[i]), det.landmarks[i],
                           eye_mouth_distance(det.landmarks[i]), None, m)

    def detect_all(self, img: np.ndarray) -> List[AlignedFace]:
        """Every face with score >= ``min_score``, aligned, best score first."""
        img = _rgb(img)
        det = self.detect(img)
        out = []
        for box, score, lm in zip(det.boxes, det.scores, det.landmarks):
            face, m = self.warp(img, lm)
            out.append(AlignedFace(face, box, float(score), lm, eye_mouth_distance(lm), m))
        return out

    def _centre_crop(self, img: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = img.shape[:2]
        side = self.fallback_fraction * min(h, w)
        oh, ow = self.size
        s = oh / side
        # Image centre ((w-1)/2, (h-1)/2) -> output centre, in pixel-centre coordinates.
        m = np.array([[s, 0.0, (ow - 1) / 2 - s * (w - 1) / 2],
                      [0.0, s, (oh - 1) / 2 - s * (h - 1) / 2]])
        half_w = ow / s / 2
        box = np.array([w / 2 - half_w, h / 2 - side / 2, w / 2 + half_w, h / 2 + side / 2])
        return warp_face(img, m, self.size, self.border), box, m


def _rgb(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB (or HxW grey) image, got "
                         f"{arr.dtype} {arr.shape}")
    return arr
