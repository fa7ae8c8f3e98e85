"""Nearest-template search over a gallery and the open-set threshold.

Templates and queries are L2-normalised, so the inner product is the cosine similarity.
Two back ends return the same top-k (same identities, scores equal to float32 rounding):

* :class:`ExactIndex`: a blocked matrix product ``Q @ T^T`` and a partial sort; ties are
  broken by the lower gallery row, so results are deterministic. Bit-identical templates
  are scored once and share that score: a float32 GEMM sums a row in an order that
  depends on where the row falls in the BLAS kernel's blocks, so two copies of one
  template could otherwise score an ulp apart and escape the tie-break. Right for galleries up
  to tens of thousands of templates.
* :class:`FaissIndex`: faiss-cpu (optional dependency). ``flat`` is faiss' exhaustive
  inner-product index (exact, multi-threaded BLAS + heaps); ``hnsw`` a graph index
  (approximate, much faster above ~1M templates, recall < 1).

:func:`build_index` picks the back end (``auto``: exact up to ``faiss_above`` templates,
faiss flat above). :func:`calibrate_threshold` sets the open-set threshold from the
top-1 scores of probes whose identities are not enrolled, with the convention of
:mod:`ranface.eval.metrics`: a probe is accepted when ``score > threshold``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from ..errors import ConfigError, RanfaceError
from ..eval.metrics import allowed_false_accepts

__all__ = ["ExactIndex", "FaissIndex", "build_index", "Calibration", "calibrate_threshold",
           "require_faiss", "INDEX_KINDS"]

INDEX_KINDS = ("auto", "exact", "faiss", "faiss-hnsw")
# Rows of (queries x templates) scored at once: bounds the temporary at ~64 MB of float32.
_BLOCK_ELEMENTS = 1 << 24


def require_faiss() -> Any:
    """The ``faiss`` module, or a :class:`RanfaceError` saying what to install."""
    try:
        import faiss  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise RanfaceError("the faiss index needs the optional package faiss-cpu: "
                           "pip install -r requirements-deploy.txt (or faiss-cpu)") from None
    return faiss


def _as_matrix(x: np.ndarray, name: str, dim: Optional[int] = None) -> np.ndarray:
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim}-d vectors, got {a.shape[1]}-d")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


def _row_hashes(bits: np.ndarray) -> np.ndarray:
    """An exact 64-bit hash of each row of a uint32 matrix (weighted sum, wrapping)."""
    weights = (np.arange(bits.shape[1], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    keys = np.empty(bits.shape[0], np.uint64)
    step = 1 << 16
    for s in range(0, bits.shape[0], step):
        keys[s:s + step] = bits[s:s + step].astype(np.uint64) @ weights
    return keys


def _first_copies(t: np.ndarray) -> Optional[np.ndarray]:
    """For each row of ``t``, the lowest row bit-identical to it; None when all differ.

    Rows are hashed exactly (their float32 bits as integers, a weighted sum mod 2**64); a
    row whose hash an earlier row has is mapped to that row only after an exact comparison,
    so a hash collision can only leave two rows apart, never join different ones.
    """
    n = t.shape[0]
    bits = t.view(np.uint32)
    _, lowest, inverse = np.unique(_row_hashes(bits), return_index=True, return_inverse=True)
    first = lowest[inverse.reshape(-1)]
    claim = np.flatnonzero(first != np.arange(n))
    if not claim.size:
        return None
    collided = claim[(bits[claim] != bits[first[claim]]).any(axis=1)]
    first[collided] = collided
    return None if len(collided) == len(claim) else first


def _check_k(k: int) -> int:
    if int(k) < 1:
        raise ConfigError(f"top_k must be >= 1, got {k}")
    return int(k)


class ExactIndex:
    """Brute-force cosine search: ``scores = Q @ T^T``, top-k per row."""

    kind = "exact"

    def __init__(self, templates: np.ndarray):
        self.templates = _as_matrix(templates, "templates")
        first = _first_copies(self.templates)
        if first is None:
            self._scored, self._columns = self.templates, None
        else:  # score each distinct template once; copies read their first copy's column
            distinct = np.flatnonzero(first == np.arange(len(first)))
            self._scored = self.templates[distinct]
            self._columns = np.searchsorted(distinct, first)

    def __len__(self) -> int:
        return self.templates.shape[0]

    @property
    def dim(self) -> int:
        return self.templates.shape[1]

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (N, min(k, len)); best first, ties by lower row."""
        q = _as_matrix(queries, "queries", self.dim)
        n, g = q.shape[0], len(self)
        k = min(_check_k(k), g)
        scores = np.empty((n, k), np.float32)
        rows = np.empty((n, k), np.int64)
        step = max(1, _BLOCK_ELEMENTS // max(g, 1))
        for s in range(0, n, step):
            sim = q[s:s + step] @ self._scored.T
            if self._columns is not None:
                sim = sim[:, self._columns]
            if k < g:
                part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
                # argpartition may cut through a tie at the k-th score: for those queries
                # pick the k among every row scoring >= it by (score, lower row).
                kth = np.take_along_axis(sim, part, 1).min(axis=1, keepdims=True)
                for i in np.flatnonzero(np.sum(sim >= kth, axis=1) > k):
                    cand = np.flatnonzero(sim[i] >= kth[i, 0])
                    part[i] = cand[np.lexsort((cand, -sim[i, cand]))[:k]]
            else:
                part = np.broadcast_to(np.arange(g), sim.shape)
            vals = np.take_along_axis(sim, part, 1)
            # Sort by score descending, then row ascending (lexsort: last key is primary).
            order = np.lexsort((part, -vals), axis=1)
            rows[s:s + step] = np.take_along_axis(part, order, 1)
            scores[s:s + step] = np.take_along_axis(vals, order, 1)
        return scores, rows


class FaissIndex:
    """faiss inner-product index over the (normalised) templates.

    ``kind`` 'flat' (``IndexFlatIP``: exhaustive, exact) or 'hnsw' (``IndexHNSWFlat``
    with inner-product metric; ``hnsw_m`` links per node, ``ef_search`` candidates per
    query: approximate).
    """

    def __init__(self, templates: np.ndarray, kind: str = "flat", hnsw_m: int = 32,
                 ef_search: int = 128, ef_construction: int = 80):
        faiss = require_faiss()
        t = _as_matrix(templates, "templates")
        if kind == "flat":
            index = faiss.IndexFlatIP(t.shape[1])
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(t.shape[1], int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(ef_construction)
            index.hnsw.efSearch = int(ef_search)
        else:
            raise ConfigError(f"faiss index kind must be 'flat' or 'hnsw', got {kind!r}")
        index.add(t)
        self.index = index
        self.kind = "faiss" if kind == "flat" else "faiss-hnsw"
        self._n, self._dim = t.shape

    def __len__(self) -> int:
        return self._n

    @property
    def dim(self) -> int:
        return self._dim

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (N, min(k, len)); best first."""
        q = _as_matrix(queries, "queries", self.dim)
        k = min(_check_k(k), self._n)
        scores, rows = self.index.search(q, k)
        if (rows < 0).any():  # hnsw can come back short of k; never for flat
            raise RanfaceError(f"faiss returned fewer than {k} neighbours; raise ef_search")
        return scores.astype(np.float32, copy=False), rows.astype(np.int64, copy=False)


def build_index(templates: np.ndarray, kind: str = "auto", faiss_above: int = 50_000,
                **faiss_options: Any):
    """An index over ``templates``: ``exact``, ``faiss`` (flat, exact), ``faiss-hnsw``
    (approximate) or ``auto`` (exact up to ``faiss_above`` templates, faiss flat above;
    exact again when faiss is not installed, which only costs speed)."""
    if kind not in INDEX_KINDS:
        raise ConfigError(f"index must be one of {INDEX_KINDS}, got {kind!r}")
    n = np.shape(templates)[0]
    if n == 0:
        raise RanfaceError("cannot search an empty gallery (it holds no identities)")
    if kind == "auto":
        if n <= faiss_above:
            return ExactIndex(templates)
        try:
            require_faiss()
        except RanfaceError:
            return ExactIndex(templates)
        kind = "faiss"
    if kind == "exact":
        return ExactIndex(templates)
    return FaissIndex(templates, "flat" if kind == "faiss" else "hnsw", **faiss_options)


@dataclass(frozen=True)
class Calibration:
    """An open-set threshold set at a target FPIR on non-enrolled probes.

    ``threshold`` accepts ``score > threshold``; ``false_accepts`` of the ``n_probes``
    calibration probes' top-1 scores lie above it (``achieved_fpir`` = their fraction,
    always ``<= fpir``). ``measurable`` is False when ``fpir * n_probes < 1``: no false
    accept is allowed and the threshold is the largest calibration score (achieved
    FPIR 0), a conservative choice the FPIR itself does not determine.
    """

    threshold: float
    fpir: float
    achieved_fpir: float
    false_accepts: int
    n_probes: int
    measurable: bool

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "fpir": self.fpir,
                "achieved_fpir": self.achieved_fpir, "false_accepts": self.false_accepts,
                "n_probes": self.n_probes, "measurable": self.measurable}


def calibrate_threshold(top1_scores: np.ndarray, fpir: float) -> Calibration:
    """Threshold t with FPIR(t) = #(top1 > t) / n <= ``fpir``, as low as possible.

    With k = floor(fpir * n) false accepts allowed, t is the (k+1)-th largest score (the
    order statistic :func:`ranface.eval.metrics.tar_at_far` uses); scores tied with it
    are rejected, so fewer than k may be accepted. k >= n accepts everything (t = -inf).
    """
    s = np.asarray(top1_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise RanfaceError("calibration needs at least one probe of a non-enrolled identity")
    if not np.isfinite(s).all():
        raise ValueError("calibration scores must be finite")
    if not 0.0 < float(fpir) <= 1.0:
        raise ConfigError(f"fpir must lie in (0, 1], got {fpir}")
    n = s.size
    k = allowed_false_accepts(fpir, n)
    if k >= n:
        t = -math.inf
    else:
        t = float(np.sort(s)[n - 1 - k])
    fa = int(np.sum(s > t))
    return Calibration(threshold=t, fpir=float(fpir), achieved_fpir=fa / n, false_accepts=fa,
                       n_probes=n, measurable=k > 0)
