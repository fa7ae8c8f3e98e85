"""Similarity transforms from facial landmarks and the warp that applies them.

Pixel convention everywhere in :mod:`ranface.align`: pixel (row i, column j) has its
centre at (x=j, y=i), so the image spans [-0.5, W-0.5] x [-0.5, H-0.5]. This is the
convention of OpenCV's ``warpAffine`` and of the insightface templates, so a matrix
estimated here does the same thing as ``cv2.warpAffine(img, M, (w, h))``.

A 2x3 matrix ``M`` maps source (x, y) to destination: ``dst = M[:, :2] @ src + M[:, 2]``.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

BORDERS = ("constant", "replicate", "reflect")
_PADDING_MODE = {"constant": "zeros", "replicate": "border", "reflect": "reflection"}


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection).

    Umeyama (1991): minimises sum ||s R src_i + t - dst_i||^2 with det(R) = +1.
    ``src`` and ``dst`` are (N, 2) with N >= 2; returns the 2x3 matrix src -> dst.
    """
    s = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    d = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(s) != len(d) or len(s) < 2:
        raise ValueError(f"need two equal sets of >= 2 points, got {len(s)} and {len(d)}")
    if not (np.isfinite(s).all() and np.isfinite(d).all()):
        raise ValueError("landmarks contain NaN or infinite values")
    mu_s, mu_d = s.mean(0), d.mean(0)
    sc, dc = s - mu_s, d - mu_d
    var_s = (sc ** 2).sum() / len(s)
    if var_s <= 1e-12:
        raise ValueError("source points coincide: no similarity transform is defined")
    cov = dc.T @ sc / len(s)
    u, sig, vt = np.linalg.svd(cov)
    # Flip the weakest axis when the best orthogonal map would be a reflection.
    sign = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0])
    rot = u @ np.diag(sign) @ vt
    scale = float((sig * sign).sum() / var_s)
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (..., 2) points with a 2x3 matrix."""
    m = np.asarray(m, dtype=np.float64)
    p = np.asarray(pts, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of an invertible 2x3 affine matrix."""
    m = np.asarray(m, dtype=np.float64)
    a_inv = np.linalg.inv(m[:, :2])
    return np.concatenate([a_inv, -a_inv @ m[:, 2:3]], axis=1)


def warp_face(img: np.ndarray, m: np.ndarray, out_size: Tuple[int, int],
              border: str = "constant") -> np.ndarray:
    """Warp ``img`` (HxWx3 or HxW uint8) by ``m`` (source -> output) into ``out_size``.

    ``out_size`` is (height, width). Bilinear interpolation at the exact pixel centres
    (module convention). ``border`` fills output pixels that fall outside the source:
    'constant' black (pixels within half a pixel of the edge blend with black, like
    OpenCV's BORDER_CONSTANT), 'replicate' the nearest edge pixel, 'reflect' a mirror
    about the image edge (edge pixel repeated, OpenCV's BORDER_REFLECT). No
    anti-aliasing: shrinking a face by more than about 2x aliases, as OpenCV's does.
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    arr = np.asarray(img)
    grey = arr.ndim == 2
    if grey:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWxC uint8 image, got {arr.dtype} {arr.shape}")
    oh, ow = int(out_size[0]), int(out_size[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"output size must be positive, got {out_size}")
    h, w = arr.shape[:2]
    inv = invert_affine(m)
    ys, xs = np.meshgrid(np.arange(oh, dtype=np.float64), np.arange(ow, dtype=np.float64),
                         indexing="ij")
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    # align_corners=False: -1 and +1 are the outer edges, so centre j is (2j + 1)/W - 1.
    grid = np.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], axis=-1)
    src = torch.tensor(arr).permute(2, 0, 1)[None].float()  # copy: input may be read-only
    out = F.grid_sample(src, torch.from_numpy(grid[None]).float(), mode="bilinear",
                        padding_mode=_PADDING_MODE[border], align_corners=False)
    res = out[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()
    return res[:, :, 0] if grey else res
