"""Greedy non-maximum suppression for axis-aligned boxes (x1, y1, x2, y2).

Two overlap measures, as in the MTCNN cascade:

* ``"union"``: intersection / union (IoU);
* ``"min"``: intersection / area of the smaller box, which also removes a small box
  lying inside a bigger one (MTCNN's last stage).

``offset`` is added to every width and height before areas are taken: 0 for boxes given
as continuous edges, 1 for MTCNN's inclusive integer pixel boxes (a box from pixel 3 to
pixel 5 is 3 pixels wide).
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
MODES = ("union", "min")


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def box_overlap(box: ArrayLike, boxes: ArrayLike, mode: str = "union",
                offset: float = 0.0) -> np.ndarray:
    """Overlap of one box (4,) with each of ``boxes`` (N, 4) under ``mode``."""
    if mode not in MODES:
        raise ValueError(f"NMS mode must be one of {MODES}, got {mode!r}")
    b = _as_numpy(box).reshape(4)
    bs = _as_numpy(boxes).reshape(-1, 4)
    iw = np.maximum(0.0, np.minimum(b[2], bs[:, 2]) - np.maximum(b[0], bs[:, 0]) + offset)
    ih = np.maximum(0.0, np.minimum(b[3], bs[:, 3]) - np.maximum(b[1], bs[:, 1]) + offset)
    inter = iw * ih
    area_b = max(b[2] - b[0] + offset, 0.0) * max(b[3] - b[1] + offset, 0.0)
    areas = np.maximum(bs[:, 2] - bs[:, 0] + offset, 0.0) * \
        np.maximum(bs[:, 3] - bs[:, 1] + offset, 0.0)
    denom = np.minimum(area_b, areas) if mode == "min" else area_b + areas - inter
    # Degenerate (zero-area) boxes overlap nothing rather than dividing by zero.
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(denom > 0, inter / np.where(denom > 0, denom, 1.0), 0.0)
    return out


def _overlap_pairs(b: np.ndarray, threshold: float, mode: str, offset: float,
                   budget: int = 1 << 20) -> Tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) whose overlap exceeds ``threshold``, found by a sweep along x.

    With boxes sorted by x1, box i can only intersect the later boxes whose x1 lies
    before its own x2, so each box is compared with its own short window (a shared
    window per chunk of boxes made a crowd photo's few large boxes cost as many pairs
    as all the small ones); windows are taken ``budget`` pairs at a time.
    """
    n = len(b)
    order = np.argsort(b[:, 0], kind="stable")
    x1, y1, x2, y2 = (b[order, k] for k in range(4))
    areas = np.maximum(x2 - x1 + offset, 0.0) * np.maximum(y2 - y1 + offset, 0.0)
    idx = np.arange(n)
    ends = np.maximum(np.searchsorted(x1, x2 + offset, side="left"), idx + 1)
    counts = ends - idx - 1  # candidates j = i+1 .. ends-1
    total = np.cumsum(counts)
    firsts, seconds = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    a0 = 0
    while a0 < n:
        done = int(total[a0 - 1]) if a0 else 0
        a1 = min(n, max(a0 + 1, int(np.searchsorted(total, done + budget, side="right"))))
        c = counts[a0:a1]
        ia = np.repeat(idx[a0:a1], c)
        jb = np.arange(len(ia)) - np.repeat(np.cumsum(c) - c, c) + ia + 1
        iw = np.minimum(x2[ia], x2[jb]) - np.maximum(x1[ia], x1[jb]) + offset
        ih = np.minimum(y2[ia], y2[jb]) - np.maximum(y1[ia], y1[jb]) + offset
        inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
        denom = np.minimum(areas[ia], areas[jb]) if mode == "min" \
            else areas[ia] + areas[jb] - inter
        # Zero-area boxes overlap nothing (ratio 0) instead of dividing by zero.
        ov = np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)
        hit = np.nonzero(ov > threshold)[0]
        firsts.append(order[ia[hit]])
        seconds.append(order[jb[hit]])
        a0 = a1
    return np.concatenate(firsts), np.concatenate(seconds)


def nms(boxes: ArrayLike, scores: ArrayLike, threshold: float, mode: str = "union",
        offset: float = 0.0) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, highest score first.

    A box is dropped when its overlap with an already kept, higher-scoring box is
    greater than ``threshold``. Equal scores keep the lower index first.
    """
    if mode not in MODES:
        raise ValueError(f"NMS mode must be one of {MODES}, got {mode!r}")
    b = _as_numpy(boxes).reshape(-1, 4)
    s = _as_numpy(scores).reshape(-1)
    if len(b) != len(s):
        raise ValueError(f"{len(b)} boxes but {len(s)} scores")
    if not len(b):
        return np.zeros(0, dtype=np.int64)
    # Greedy NMS on the sparse graph of overlapping pairs (overlap is symmetric): a
    # kept box suppresses its neighbours; P-Net yields 10^4 candidates, few overlapping.
    first, second = _overlap_pairs(b, threshold, mode, offset)
    src = np.concatenate([first, second])
    dst = np.concatenate([second, first])
    by_src = np.argsort(src, kind="stable")
    dst = dst[by_src]
    starts = np.searchsorted(src[by_src], np.arange(len(b) + 1))
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in np.argsort(-s, kind="stable"):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[dst[starts[i]:starts[i + 1]]] = True
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: ArrayLike, scores: ArrayLike, groups: ArrayLike, threshold: float,
                mode: str = "union", offset: float = 0.0) -> np.ndarray:
    """NMS run separately inside each group id; indices sorted by descending score."""
    g = np.asarray(groups.detach().cpu().numpy() if isinstance(groups, torch.Tensor)
                   else groups).reshape(-1)
    s = _as_numpy(scores).reshape(-1)
    b = _as_numpy(boxes).reshape(-1, 4)
    kept = [np.flatnonzero(g == gid)[nms(b[g == gid], s[g == gid], threshold, mode, offset)]
            for gid in np.unique(g)]
    if not kept:
        return np.zeros(0, dtype=np.int64)
    idx = np.concatenate(kept)
    return idx[np.argsort(-s[idx], kind="stable")]
