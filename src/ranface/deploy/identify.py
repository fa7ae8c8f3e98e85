"""Faces in photos and video frames -> identities: detection, the small-face floor,
alignment, the open-set decision, and the result files of ``ranface identify``.

Per frame: MTCNN finds every face (at the ``upscales`` given, so small faces are found);
a face whose eye-midpoint to mouth-midpoint distance is below ``min_eye_mouth`` original
pixels is reported as ``too_small`` and not identified (below ~8 px there is too little
face left to guess from); the others are aligned to the gallery's template, embedded,
and searched. The decision on the top-1 identity follows the metrics convention:
``match`` when ``score > threshold``, else ``unknown`` (``no_threshold`` when no
threshold was set: the top-k is reported, nothing is decided).
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..align.transform import estimate_similarity, invert_affine, warp_face
from ..io_utils import atomic_write_text

__all__ = ["FaceResult", "FrameResult", "decide", "align_detections", "warp_local",
           "write_results", "summarise_frames", "STATUSES"]

STATUSES = ("match", "unknown", "no_threshold", "too_small")


@dataclass
class FaceResult:
    """One detected face: where it is, how big, and who it is.

    ``box`` x1 y1 x2 y2 and ``landmarks`` (5, 2) in original pixels; ``eye_mouth_px``
    the eye-to-mouth distance; ``status`` one of :data:`STATUSES`; ``identity`` the
    decided identity (``match`` only); ``score`` the top-1 cosine; ``top_k`` the
    (identity, cosine) list, best first (empty when ``too_small``).
    """

    box: np.ndarray
    det_score: float
    landmarks: np.ndarray
    eye_mouth_px: float
    status: str
    identity: Optional[str] = None
    score: Optional[float] = None
    top_k: List[Tuple[str, float]] = field(default_factory=list)

    def label(self) -> str:
        if self.status == "too_small":
            return "too small"
        if self.status == "match":
            return f"{self.identity} {self.score:.2f}"
        if self.status == "unknown":
            return f"unknown {self.score:.2f}"
        return f"{self.top_k[0][0]}? {self.score:.2f}" if self.top_k else ""

    def to_dict(self) -> Dict[str, Any]:
        return {"box": [round(float(v), 2) for v in self.box],
                "det_score": round(float(self.det_score), 4),
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
                "eye_mouth_px": round(float(self.eye_mouth_px), 2), "status": self.status,
                "identity": self.identity,
                "score": None if self.score is None else round(float(self.score), 6),
                "top_k": [{"identity": n, "score": round(float(s), 6)} for n, s in self.top_k]}


@dataclass
class FrameResult:
    """The faces of one photo or one sampled video frame (``frame``/``time_s`` None
    for a photo). ``error`` says why a photo or video could not be read (skipped with
    ``on_error='skip'``); ``faces`` is then empty."""

    source: str
    frame: Optional[int]
    time_s: Optional[float]
    width: int
    height: int
    faces: List[FaceResult]
    error: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        d = {"source": self.source, "frame": self.frame,
             "time_s": None if self.time_s is None else round(self.time_s, 4),
             "width": self.width, "height": self.height,
             "faces": [f.to_dict() for f in self.faces]}
        if self.error:
            d["error"] = self.error
        return d


def decide(scores: np.ndarray, rows: np.ndarray, names: Sequence[str],
           threshold: Optional[float]) -> Tuple[str, Optional[str], float, List[Tuple[str, float]]]:
    """(status, identity, top-1 score, top-k) of one query's search result row."""
    top = [(names[int(r)], float(s)) for s, r in zip(scores, rows)]
    best = top[0][1]
    if threshold is None:
        return "no_threshold", None, best, top
    if best > threshold:
        return "match", top[0][0], best, top
    return "unknown", None, best, top


def warp_local(img: np.ndarray, matrix: np.ndarray, size: Tuple[int, int],
               border: str = "constant") -> np.ndarray:
    """:func:`ranface.align.transform.warp_face` on only the part of ``img`` the face
    samples from: the same pixels (up to float rounding) at a cost independent of the
    photo's size, which matters with hundreds of faces in a 2-megapixel frame."""
    h, w = img.shape[:2]
    oh, ow = size
    inv = invert_affine(matrix)
    corners = np.array([[0, 0, 1], [ow - 1, 0, 1], [0, oh - 1, 1], [ow - 1, oh - 1, 1]], float)
    src = corners @ inv.T
    # Bilinear taps reach one pixel past the mapped corners; two more keep the crop's own
    # (zero-padded) border out of reach unless it is the photo's border.
    x0 = max(0, int(math.floor(src[:, 0].min())) - 3)
    y0 = max(0, int(math.floor(src[:, 1].min())) - 3)
    x1 = min(w, int(math.ceil(src[:, 0].max())) + 4)
    y1 = min(h, int(math.ceil(src[:, 1].max())) + 4)
    if x1 <= x0 or y1 <= y0:
        return warp_face(img, matrix, size, border)
    m = np.array(matrix, dtype=np.float64).copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    crop = img[y0:y1, x0:x1]
    if border != "constant" and (x0 > 0 or y0 > 0 or x1 < w or y1 < h):
        # replicate/reflect need the true photo edge; only a whole-photo warp has it.
        return warp_face(img, matrix, size, border)
    return warp_face(crop, m, size, border)


def align_detections(img: np.ndarray, detections: Any, points: np.ndarray,
                     size: Tuple[int, int], min_eye_mouth: float, border: str = "constant"
                     ) -> Tuple[List[Optional[np.ndarray]], np.ndarray]:
    """Aligned faces (None for faces under the ``min_eye_mouth`` floor) and the
    eye-to-mouth distances of MTCNN ``detections`` (boxes, scores, landmarks)."""
    from ..align.select import eye_mouth_distance  # noqa: PLC0415

    faces: List[Optional[np.ndarray]] = []
    em = np.array([eye_mouth_distance(lm) for lm in detections.landmarks], dtype=np.float64)
    for lm, d in zip(detections.landmarks, em):
        if d < min_eye_mouth:
            faces.append(None)
            continue
        m = estimate_similarity(lm, points)
        faces.append(warp_local(img, m, size, border))
    return faces, em


# ------------------------------------------------------------------ result files
_CSV_FIELDS = ("source", "frame", "time_s", "face", "x1", "y1", "x2", "y2", "det_score",
               "landmarks", "eye_mouth_px", "status", "identity", "score", "top_ids",
               "top_scores")


def _csv_rows(frames: Sequence[FrameResult]):
    for fr in frames:
        base = {"source": fr.source, "frame": "" if fr.frame is None else fr.frame,
                "time_s": "" if fr.time_s is None else f"{fr.time_s:.4f}"}
        if fr.error:
            yield dict(base, face="", status="unreadable", identity=fr.error)
            continue
        if not fr.faces:
            yield dict(base, face="", status="no_face")
            continue
        for i, f in enumerate(fr.faces):
            d = f.to_dict()
            yield dict(base, face=i, x1=d["box"][0], y1=d["box"][1], x2=d["box"][2],
                       y2=d["box"][3], det_score=d["det_score"],
                       landmarks=" ".join(f"{x} {y}" for x, y in d["landmarks"]),
                       eye_mouth_px=d["eye_mouth_px"], status=f.status,
                       identity=f.identity or "",
                       score="" if f.score is None else f"{f.score:.6f}",
                       top_ids=";".join(n for n, _ in f.top_k),
                       top_scores=";".join(f"{s:.6f}" for _, s in f.top_k))


def summarise_frames(frames: Sequence[FrameResult]) -> Dict[str, Any]:
    """Counts over all frames: faces found, by status, frames without a face."""
    by_status = {s: 0 for s in STATUSES}
    n_faces = 0
    for fr in frames:
        for f in fr.faces:
            by_status[f.status] += 1
            n_faces += 1
    errors = sum(bool(fr.error) for fr in frames)
    out = {"frames": len(frames) - errors,
           "frames_without_faces": sum(not fr.faces and not fr.error for fr in frames),
           "faces": n_faces, **by_status}
    if errors:
        out["unreadable"] = errors
    return out


def write_results(path: str, frames: Sequence[FrameResult], header: Dict[str, Any]) -> str:
    """Write ``frames`` as CSV (one row per face; ``no_face`` rows for empty frames,
    ``unreadable`` rows, with the reason in ``identity``, for skipped inputs)
    when ``path`` ends in .csv, else JSON (``header`` + summary + frames); atomically."""
    if path.lower().endswith(".csv"):
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for row in _csv_rows(frames):
            w.writerow(row)
        atomic_write_text(path, buf.getvalue())
    else:
        doc = dict(header, summary=summarise_frames(frames), frames=[f.to_dict() for f in frames])
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path
