"""The metrics engine shared by every evaluation protocol.

Conventions used throughout (scores: higher = more similar):

* A pair / probe is **accepted** when ``score > threshold`` (strictly). Impostors tied
  with the threshold are therefore rejected, and so are genuine pairs tied with it.
* Every operating point is an *exact* order statistic of the scores, never an
  interpolation: "TAR at FAR f" is the largest TAR over all thresholds whose achieved
  FAR is ``<= f``. The achieved FAR and the threshold are reported with it.
* A FAR ``f`` with ``f * n_impostor < 1`` allows no false accept at all and cannot be
  told apart from any smaller FAR: it is reported as *not measurable* (``tar=None``),
  never extrapolated.

Verification (LFW-style 10-fold accuracy), 1:1 TAR@FAR (IJB-C, also streamed over
40M pairs with bounded memory), ROC points and AUC (identical to scikit-learn's), closed-set
CMC and open-set TPIR@FPIR (QMUL-SurvFace) all live here, built on the same two
primitives: a sorted genuine array and the sorted top of the impostor array.

Inputs that are not valid score arrays (wrong shape, NaN, empty) raise ``ValueError``:
they come from the caller's code, not from a user's file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, TypedDict

import numpy as np

__all__ = [
    "OperatingPoint",
    "allowed_false_accepts",
    "tar_at_far",
    "StreamingTarAtFar",
    "roc_curve_points",
    "roc_auc",
    "best_accuracy_threshold",
    "kfold_verification_accuracy",
    "paired_bootstrap_difference",
    "seeds_paired_bootstrap_difference",
    "KFoldResult",
    "match_ranks",
    "cmc",
    "OpenSetScores",
    "open_set_scores",
    "tpir_at_fpir",
    "tpir_fpir_curve",
    "tpir_fpir_auc",
]

# Rows of a similarity matrix processed at once: bounds the (rows x gallery) temporaries.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class OperatingPoint:
    """One exact point of a ROC (or, for open-set identification, TPIR-FPIR) curve.

    ``far`` is the requested FAR (FPIR); ``tar`` the true accept (identification) rate at
    the lowest threshold whose achieved FAR is ``<= far``; ``threshold`` that threshold
    (accept when ``score > threshold``; ``-inf`` when every impostor may be accepted);
    ``false_accepts`` the number of impostors strictly above it, ``achieved_far`` that
    number over ``n_impostor``. When ``measurable`` is False the FAR is below the
    resolution ``1 / n_impostor`` and ``tar``, ``threshold``, ``achieved_far`` and
    ``false_accepts`` are None.
    """

    far: float
    tar: Optional[float]
    threshold: Optional[float]
    achieved_far: Optional[float]
    false_accepts: Optional[int]
    n_genuine: int
    n_impostor: int
    measurable: bool


# --------------------------------------------------------------------------- helpers
def _scores(x, name: str) -> np.ndarray:
    """A 1-D, non-empty, finite, real array (dtype kept: float32 stays float32)."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of scores, got shape {a.shape}")
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected real scores, got dtype {a.dtype}")
    if a.size == 0:
        raise ValueError(f"{name}: no scores")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{name}: score at index {i} is {a[i]} (scores must be finite)")
    return a


def _check_rates(rates: Iterable[float], name: str) -> List[float]:
    out = [float(r) for r in rates]
    if not out:
        raise ValueError(f"{name}: no rates given")
    for r in out:
        if not 0.0 < r <= 1.0:
            raise ValueError(f"{name}: {r} is not in (0, 1]")
    return out


def allowed_false_accepts(far: float, n_impostor: int) -> int:
    """``floor(far * n_impostor)``, computed exactly on the decimal value of ``far``.

    ``1e-7 * 40_000_000`` is 3.9999999999999996 in floating point; reading ``far`` as
    the decimal the user wrote (its shortest repr) gives the intended 4.
    """
    return math.floor(Fraction(repr(float(far))) * int(n_impostor))


def _top_sorted(imp: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values of ``imp``, ascending (a partition, then a small sort)."""
    n = imp.size
    if k >= n:
        return np.sort(imp)
    top = np.partition(imp, n - k)[n - k:]
    top.sort()
    return top


def _operating_points(gen_sorted: np.ndarray, n_genuine: int, imp_top: np.ndarray,
                      n_impostor: int, fars: Sequence[float]) -> Dict[float, OperatingPoint]:
    """Exact TAR@FAR from sorted genuine scores and the ascending top of the impostors.

    ``gen_sorted`` may hold fewer than ``n_genuine`` scores: the missing ones never pass
    any threshold (open-set mates found outside the rank). ``imp_top`` must hold the
    ``allowed_false_accepts(max(fars), n_impostor) + 1`` largest impostor scores (or all).
    """
    out: Dict[float, OperatingPoint] = {}
    n_top = imp_top.size
    for far in fars:
        k = allowed_false_accepts(far, n_impostor)
        if k == 0:
            out[far] = OperatingPoint(far, None, None, None, None, n_genuine, n_impostor, False)
            continue
        if k >= n_impostor:
            threshold = -math.inf
            false_accepts = n_impostor
            accepted = gen_sorted.size
        else:
            if k >= n_top:
                raise ValueError(f"FAR {far} needs the top {k + 1} impostor scores, "
                                 f"only {n_top} were kept")
            t = imp_top[n_top - 1 - k]  # the (k+1)-th largest impostor score
            # Everything strictly above t is among the kept top, so counting there is exact.
            false_accepts = int(n_top - np.searchsorted(imp_top, t, side="right"))
            accepted = int(gen_sorted.size - np.searchsorted(gen_sorted, t, side="right"))
            threshold = float(t)
        out[far] = OperatingPoint(far, accepted / n_genuine, threshold,
                                  false_accepts / n_impostor, false_accepts,
                                  n_genuine, n_impostor, True)
    return out


def _roc_points(gen_sorted: np.ndarray, n_genuine: int, imp_sorted: np.ndarray,
                n_impostor: int, exact_above: Optional[float] = None
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct score (accepting ``score >= v``), as sklearn does.

    With ``exact_above`` only thresholds strictly above it are produced: the impostor
    array then holds just a top part, whose counts are exact only above its minimum.
    """
    values = np.unique(np.concatenate([gen_sorted.astype(np.float64, copy=False),
                                       imp_sorted.astype(np.float64, copy=False)]))[::-1]
    if exact_above is not None:
        values = values[values > exact_above]
    tps = gen_sorted.size - np.searchsorted(gen_sorted, values, side="left")
    fps = imp_sorted.size - np.searchsorted(imp_sorted, values, side="left")
    thresholds = np.concatenate([[np.inf], values])
    tpr = np.concatenate([[0], tps]) / n_genuine
    fpr = np.concatenate([[0], fps]) / n_impostor
    return fpr, tpr, thresholds


def _subsample_curve(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray,
                     max_points: int, n_impostor: int
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep at most ``max_points`` exact points, spaced evenly in log FAR.

    For each FAR target on a geometric grid the kept point is the last one with
    ``fpr <= target``, i.e. exactly the TAR@FAR point, plus both ends of the curve.
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    if fpr.size <= max_points:
        return fpr, tpr, thresholds
    targets = np.geomspace(1.0 / n_impostor, 1.0, max_points - 2) if max_points > 2 \
        else np.empty(0)
    idx = np.searchsorted(fpr, targets, side="right") - 1
    # At most max_points - 2 targets plus the two ends, fewer after de-duplication.
    keep = np.unique(np.concatenate([[0, fpr.size - 1], idx[idx >= 0]]))
    return fpr[keep], tpr[keep], thresholds[keep]


def _mann_whitney_auc(gen_sorted: np.ndarray, n_genuine: int, imp: np.ndarray,
                      block: int = _BLOCK_ELEMENTS) -> float:
    """P(g > i) + P(g == i) / 2, exactly, in integer arithmetic, in impostor blocks.

    Equals the trapezoidal area under the full ROC (ties give diagonal segments), as
    ``sklearn.metrics.roc_auc_score``; genuine scores absent from ``gen_sorted`` count
    as below every impostor.
    """
    twice = 0
    ng = gen_sorted.size
    for s in range(0, imp.size, block):
        c = imp[s:s + block]
        lo = np.searchsorted(gen_sorted, c, side="left")
        hi = np.searchsorted(gen_sorted, c, side="right")
        twice += int((2 * (ng - hi) + (hi - lo)).sum(dtype=np.int64))
    return twice / (2 * n_genuine * imp.size)


# ------------------------------------------------------------------- 1:1 verification
def tar_at_far(genuine, impostor, fars: Iterable[float] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
               ) -> Dict[float, OperatingPoint]:
    """Exact TAR at each FAR, by order statistics of the impostor scores.

    With ``n`` impostor scores and ``k = floor(far * n)`` false accepts allowed, the
    threshold is the (k+1)-th largest impostor score: no lower threshold keeps the
    number of impostors strictly above it ``<= k``, so the TAR is maximal. Tied
    impostors at the threshold are all rejected, so the achieved FAR can be below
    ``far`` (never above). ``far * n < 1`` is not measurable (see
    :class:`OperatingPoint`). Only the top ``k_max + 1`` impostors are sorted
    (``np.partition``), so 40M scores take a fraction of what a full sort takes.
    """
    g = np.sort(_scores(genuine, "genuine scores"))
    imp = _scores(impostor, "impostor scores")
    fars = _check_rates(fars, "fars")
    k_max = max(allowed_false_accepts(f, imp.size) for f in fars)
    top = _top_sorted(imp, min(k_max, imp.size - 1) + 1)
    return _operating_points(g, g.size, top, imp.size, fars)


class StreamingTarAtFar:
    """Exact TAR@FAR over scores that arrive in blocks, with bounded impostor memory.

    All genuine scores are kept (IJB-C: ~20k-200k). Impostor scores are reduced to the
    ``K = floor(max_far * max_impostors) + 1`` largest ones: whenever the buffer exceeds
    ``2K`` (and a minimum size) it is cut back to its top ``K`` with ``np.partition``.
    Pruning needs ``max_impostors``, an upper bound on the final impostor count (IJB-C
    knows it from the pair list before scoring): without it, an early score that is
    not in the current top can still be needed later, when a flood of lower scores
    raises the final ``K``; so with ``max_impostors=None`` every impostor is kept.
    Adding more impostors than ``max_impostors`` raises ``ValueError``.

    :meth:`result` equals :func:`tar_at_far` on the concatenated scores exactly.
    """

    def __init__(self, fars: Iterable[float], max_far: Optional[float] = None,
                 max_impostors: Optional[int] = None, min_buffer: int = 1 << 20):
        self.fars = _check_rates(fars, "fars")
        self.max_far = max(self.fars) if max_far is None else float(max_far)
        if max(self.fars) > self.max_far:
            raise ValueError(f"fars go up to {max(self.fars)} but max_far is {self.max_far}")
        if max_impostors is not None and max_impostors < 1:
            raise ValueError(f"max_impostors must be positive, got {max_impostors}")
        self.max_impostors = max_impostors
        self._keep: Optional[int] = None if max_impostors is None else \
            allowed_false_accepts(self.max_far, max_impostors) + 1
        self._min_buffer = int(min_buffer)
        self._genuine: List[np.ndarray] = []
        self._impostor: List[np.ndarray] = []
        self._n_buffered = 0
        self.n_genuine = 0
        self.n_impostor = 0

    def add_genuine(self, scores) -> None:
        self._add_genuine(scores, copy=True)

    def add_impostor(self, scores) -> None:
        self._add_impostor(scores, copy=True)

    def _add_genuine(self, scores, copy: bool) -> None:
        g = _scores(scores, "genuine block")
        self._genuine.append(g.copy() if copy else g)  # the caller may reuse its buffer
        self.n_genuine += g.size

    def _add_impostor(self, scores, copy: bool) -> None:
        imp = _scores(scores, "impostor block")
        if self.max_impostors is not None and self.n_impostor + imp.size > self.max_impostors:
            raise ValueError(f"{self.n_impostor + imp.size} impostor scores exceed the declared "
                             f"max_impostors={self.max_impostors}; the kept top would be too "
                             "short to stay exact")
        self._impostor.append(imp.copy() if copy else imp)
        self.n_impostor += imp.size
        self._n_buffered += imp.size
        if self._keep is not None and self._n_buffered > max(2 * self._keep, self._min_buffer):
            self._prune()

    def add(self, scores, labels) -> None:
        """Add a block of scores with labels (1/True = genuine, 0/False = impostor)."""
        s = np.asarray(scores)
        lab = np.asarray(labels)
        if s.shape != lab.shape or s.ndim != 1:
            raise ValueError(f"scores {s.shape} and labels {lab.shape} must be 1-D and match")
        if lab.dtype != np.bool_:
            if not np.isin(lab, (0, 1)).all():
                raise ValueError("labels must be 0/1 or boolean")
            lab = lab == 1
        if lab.any():
            self._add_genuine(s[lab], copy=False)  # boolean indexing already copied
        if not lab.all():
            self._add_impostor(s[~lab], copy=False)

    def _prune(self) -> None:
        buf = np.concatenate(self._impostor) if len(self._impostor) > 1 else self._impostor[0]
        if self._keep is not None and buf.size > self._keep:
            buf = np.partition(buf, buf.size - self._keep)[buf.size - self._keep:].copy()
        self._impostor = [buf]
        self._n_buffered = buf.size

    def _arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        if not self._genuine or not self._impostor:
            raise ValueError(f"need genuine and impostor scores, have {self.n_genuine} "
                             f"genuine and {self.n_impostor} impostor")
        self._prune()
        self._genuine = [np.concatenate(self._genuine)] if len(self._genuine) > 1 \
            else self._genuine
        return np.sort(self._genuine[0]), self._impostor[0]

    def result(self) -> Dict[float, OperatingPoint]:
        """TAR@FAR for every requested FAR; the object can keep receiving blocks."""
        g, imp = self._arrays()
        k_max = max(allowed_false_accepts(f, self.n_impostor) for f in self.fars)
        top = _top_sorted(imp, min(k_max, self.n_impostor - 1) + 1)
        return _operating_points(g, g.size, top, self.n_impostor, self.fars)

    def roc(self, max_points: Optional[int] = None
            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ROC points (as :func:`roc_curve_points`) over the exactly known low-FAR part.

        After pruning only thresholds above the smallest kept impostor have exact
        counts, so the curve stops near FAR = ``max_far``; unpruned, it is complete.
        """
        g, imp = self._arrays()
        imp = np.sort(imp)
        exact_above = None if imp.size == self.n_impostor else float(imp[0])
        fpr, tpr, thr = _roc_points(g, g.size, imp, self.n_impostor, exact_above)
        if max_points is not None:
            fpr, tpr, thr = _subsample_curve(fpr, tpr, thr, max_points, self.n_impostor)
        return fpr, tpr, thr

    @property
    def n_kept_impostors(self) -> int:
        """Impostor scores held in memory now (for memory reports and tests)."""
        return sum(a.size for a in self._impostor)


def roc_curve_points(genuine, impostor, max_points: Optional[int] = None
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` with one point per distinct score, descending.

    Identical to ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``:
    the first point is ``(0, 0)`` at threshold ``inf``; point ``i`` accepts
    ``score >= thresholds[i]`` (the same operating points as ``score > t`` for ``t``
    just below it). ``max_points`` keeps an exact subset, spaced in log FAR, for plots.
    """
    g = np.sort(_scores(genuine, "genuine scores"))
    imp = np.sort(_scores(impostor, "impostor scores"))
    fpr, tpr, thr = _roc_points(g, g.size, imp, imp.size)
    if max_points is not None:
        fpr, tpr, thr = _subsample_curve(fpr, tpr, thr, max_points, imp.size)
    return fpr, tpr, thr


def roc_auc(genuine, impostor) -> float:
    """Area under the ROC, equal to ``sklearn.metrics.roc_auc_score`` (ties count half)."""
    g = np.sort(_scores(genuine, "genuine scores"))
    imp = _scores(impostor, "impostor scores")
    return _mann_whitney_auc(g, g.size, imp)


# ---------------------------------------------------------------- k-fold verification
def _labels(issame, n: int, name: str = "issame") -> np.ndarray:
    lab = np.asarray(issame)
    if lab.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {lab.shape}")
    if lab.dtype != np.bool_:
        if not np.isin(lab, (0, 1)).all():
            raise ValueError(f"{name}: labels must be 0/1 or boolean")
        lab = lab == 1
    return lab


def best_accuracy_threshold(scores, issame) -> Tuple[float, float]:
    """The threshold maximising verification accuracy on these pairs, and that accuracy.

    Accuracy (predict "same" when ``score > t``) only changes at the observed scores,
    so trying one threshold per gap covers every achievable accuracy: the candidates
    are the midpoints between consecutive distinct scores, ``-inf`` (accept all) and
    ``+inf`` (reject all). Ties between candidates go to the lowest threshold. This is
    exact, unlike a fixed grid (insightface's ``np.arange(0, 4, 0.01)`` on distances),
    which can miss the best gap and depends on the scores' scale.
    """
    s = _scores(scores, "scores").astype(np.float64)
    same = _labels(issame, s.size)
    u, inv = np.unique(s, return_inverse=True)
    n_gen_at = np.bincount(inv, weights=same.astype(np.float64), minlength=u.size)
    n_imp_at = np.bincount(inv, weights=(~same).astype(np.float64), minlength=u.size)
    # Candidate j (0..m) accepts the distinct values u[j:]: TP = genuine at >= j, TN = impostors < j.
    tn = np.concatenate([[0.0], np.cumsum(n_imp_at)])
    tp = same.sum() - np.concatenate([[0.0], np.cumsum(n_gen_at)])
    correct = tp + tn
    j = int(np.argmax(correct))
    if j == 0:
        t = -math.inf
    elif j == u.size:
        t = math.inf
    else:
        a, b = u[j - 1], u[j]
        t = a + (b - a) / 2
        if not a <= t < b:  # adjacent floats: the midpoint rounds onto b
            t = a
        t = float(t)
    return t, float(correct[j] / s.size)


def equal_error_rate(genuine, impostor) -> Tuple[float, float]:
    """(EER, threshold): where the false-accept rate (impostors ``> t``) and the
    false-reject rate (genuine ``<= t``) meet. Both rates only change at observed
    scores, so every distinct score is tried as ``t``; at the first ``t`` where FRR
    reaches FAR the EER is the mean of the two there (they differ by at most one
    step of 1/n)."""
    g = np.sort(_scores(genuine, "genuine scores").astype(np.float64))
    imp = np.sort(_scores(impostor, "impostor scores").astype(np.float64))
    t = np.unique(np.concatenate([g, imp]))
    frr = np.searchsorted(g, t, side="right") / g.size
    far = 1.0 - np.searchsorted(imp, t, side="right") / imp.size
    j = int(np.argmax(frr >= far))
    return float((frr[j] + far[j]) / 2), float(t[j])


class KFoldResult(TypedDict):
    mean: float
    std: float
    fold_accuracies: np.ndarray
    thresholds: np.ndarray
    correct: np.ndarray  # per pair: the decision at its fold's threshold was right


def _contiguous_folds(n: int, n_folds: int) -> np.ndarray:
    # Same split as sklearn's KFold(n_folds, shuffle=False): the first n % k folds get one more.
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def kfold_verification_accuracy(scores, issame, n_folds: int = 10,
                                folds=None) -> KFoldResult:
    """LFW-protocol accuracy: threshold chosen on the other folds, tested on each fold.

    ``folds`` gives each pair's fold id (LFW ``pairs.txt`` has explicit folds); by
    default the pairs are split into ``n_folds`` contiguous folds like insightface's
    unshuffled ``KFold``. The threshold of each fold is :func:`best_accuracy_threshold`
    on the remaining folds. ``std`` is the population std (``np.std``, ddof=0), as
    insightface reports it.
    """
    s = _scores(scores, "scores").astype(np.float64)
    same = _labels(issame, s.size)
    if folds is None:
        if not 2 <= n_folds <= s.size:
            raise ValueError(f"n_folds must be in [2, {s.size}], got {n_folds}")
        fold_ids = _contiguous_folds(s.size, n_folds)
    else:
        fold_ids = np.asarray(folds)
        if fold_ids.shape != s.shape:
            raise ValueError(f"folds: expected shape {s.shape}, got {fold_ids.shape}")
    ids = np.unique(fold_ids)
    if ids.size < 2:
        raise ValueError("need at least two folds")
    correct = np.zeros(s.size, bool)
    accs, thrs = [], []
    for f in ids:
        test = fold_ids == f
        t, _ = best_accuracy_threshold(s[~test], same[~test])
        correct[test] = (s[test] > t) == same[test]
        accs.append(float(np.mean(correct[test])))
        thrs.append(t)
    acc = np.array(accs)
    return KFoldResult(mean=float(acc.mean()), std=float(acc.std()),
                       fold_accuracies=acc, thresholds=np.array(thrs), correct=correct)


class PairedDifference(TypedDict):
    diff: float
    lo: float
    hi: float
    n: int
    n_boot: int
    level: float


def paired_bootstrap_difference(correct_a, correct_b, folds=None, n_boot: int = 2000, level: float = 0.95,
                                seed: int = 0) -> PairedDifference:
    """Accuracy of A minus accuracy of B on the same pairs, with a percentile bootstrap
    interval over pairs (Efron & Tibshirani 1993, ch. 13).

    ``correct_a`` / ``correct_b``: each pair's k-fold decision was right (the ``correct``
    of :func:`kfold_verification_accuracy`), for the same pairs in the same order. Each
    replicate resamples pairs with replacement -- within each fold when ``folds`` is given,
    so every replicate keeps the folds' sizes -- and takes the mean of ``a - b`` over the
    resample: the pairing removes the variance the two models share (the hard pairs are
    hard for both). ``diff`` is the mean fold accuracy difference (as the k-fold accuracy
    is a mean of equal-sized folds, the plain mean over pairs when folds are equal).
    """
    a = np.asarray(correct_a, dtype=np.float64).ravel()
    b = np.asarray(correct_b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"correct_a and correct_b must be non-empty and equal in length, got {a.size} and {b.size}")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    d = a - b
    fold_ids = np.zeros(d.size, np.int64) if folds is None else np.asarray(folds).ravel()
    if fold_ids.shape != d.shape:
        raise ValueError(f"folds: expected {d.size} fold ids, got {fold_ids.size}")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(fold_ids == f) for f in np.unique(fold_ids)]
    reps = np.zeros(n_boot)
    for idx in groups:  # mean of fold means, each fold resampled within itself
        draw = rng.integers(0, idx.size, size=(n_boot, idx.size))
        reps += d[idx][draw].mean(axis=1)
    reps /= len(groups)
    point = float(np.mean([d[idx].mean() for idx in groups]))
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return PairedDifference(diff=point, lo=float(lo), hi=float(hi), n=int(d.size), n_boot=int(n_boot),
                            level=float(level))


class SeedsPairedDifference(TypedDict):
    diff: float
    lo: float
    hi: float
    per_seed: List[float]
    seed_std: float
    n_positive: int
    n_seeds: int
    n: int
    n_boot: int
    level: float


def seeds_paired_bootstrap_difference(correct_a, correct_b, folds=None, n_boot: int = 2000,
                                      level: float = 0.95, seed: int = 0) -> SeedsPairedDifference:
    """A minus B over several training seeds, each seed's two models scored on the same pairs.

    ``correct_a`` / ``correct_b``: arrays (S, N), row s = seed s's per-pair k-fold decisions
    (as in :func:`paired_bootstrap_difference`); every seed scored the same N pairs (the same
    test set), so the two sources of noise are crossed, not nested. Each replicate draws S
    seeds with replacement and, within each fold, N_f pairs with replacement -- one pair draw
    shared by all seeds, since it is one test set -- and takes the mean over the drawn seeds
    of the mean fold difference over the drawn pairs (a two-way bootstrap; Davison & Hinkley
    1997, §3.8). The interval thus covers the training-seed spread (another MR-GAN, another
    fine-tuning run) as well as the test-pair sampling that a one-seed interval covers; with
    few seeds it is optimistic about the seed part, so ``per_seed``, ``seed_std`` (ddof 1)
    and ``n_positive`` (seeds with A > B) are returned to be read beside it.
    """
    a = np.atleast_2d(np.asarray(correct_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(correct_b, dtype=np.float64))
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"correct_a and correct_b must be non-empty (seeds, pairs) arrays of one shape, "
                         f"got {a.shape} and {b.shape}")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    d = a - b
    n_seeds, n = d.shape
    fold_ids = np.zeros(n, np.int64) if folds is None else np.asarray(folds).ravel()
    if fold_ids.shape != (n,):
        raise ValueError(f"folds: expected {n} fold ids, got {fold_ids.size}")
    groups = [np.flatnonzero(fold_ids == f) for f in np.unique(fold_ids)]
    per_seed = np.mean([d[:, idx].mean(axis=1) for idx in groups], axis=0)  # (S,) mean fold difference
    rng = np.random.default_rng(seed)
    by_seed = np.zeros((n_boot, n_seeds))  # each replicate's resampled difference of every seed
    for idx in groups:
        draw = rng.integers(0, idx.size, size=(n_boot, idx.size))
        by_seed += d[:, idx][:, draw].mean(axis=2).T
    by_seed /= len(groups)
    pick = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    reps = np.take_along_axis(by_seed, pick, axis=1).mean(axis=1)
    lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return SeedsPairedDifference(
        diff=float(per_seed.mean()), lo=float(lo), hi=float(hi), per_seed=[float(x) for x in per_seed],
        seed_std=float(per_seed.std(ddof=1)) if n_seeds > 1 else 0.0, n_positive=int((per_seed > 0).sum()),
        n_seeds=int(n_seeds), n=int(n), n_boot=int(n_boot), level=float(level))


# ------------------------------------------------------------------ identification
def _similarity(similarity, n_probe: int, n_gallery: int) -> np.ndarray:
    sim = np.asarray(similarity)
    if sim.shape != (n_probe, n_gallery):
        raise ValueError(f"similarity: expected shape ({n_probe}, {n_gallery}) "
                         f"(probes x gallery), got {sim.shape}")
    if sim.dtype.kind not in "fiu":
        raise ValueError(f"similarity: expected real scores, got dtype {sim.dtype}")
    return sim


def _encode_labels(probe_labels, gallery_labels) -> Tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probe_labels)
    g = np.asarray(gallery_labels)
    if p.ndim != 1 or g.ndim != 1 or g.size == 0 or p.size == 0:
        raise ValueError(f"labels must be non-empty 1-D arrays, got probe {p.shape}, "
                         f"gallery {g.shape}")
    _, codes = np.unique(np.concatenate([g, p]), return_inverse=True)
    return codes[g.size:], codes[:g.size]


def _mate_stats(sim: np.ndarray, p_codes: np.ndarray, g_codes: np.ndarray
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per probe: has a mate, best mate score, rank of that mate, best overall score.

    rank = 1 + number of non-mate gallery entries scoring ``>=`` the best mate: ties
    with non-mates count against the probe (pessimistic).
    """
    n, m = sim.shape
    has = np.zeros(n, bool)
    best = np.full(n, -np.inf)
    rank = np.zeros(n, np.int64)
    top = np.empty(n, np.float64)
    rows = max(1, _BLOCK_ELEMENTS // max(m, 1))
    for s in range(0, n, rows):
        blk = sim[s:s + rows]
        if blk.dtype.kind == "f" and not np.isfinite(blk).all():
            i, j = np.argwhere(~np.isfinite(blk))[0]
            raise ValueError(f"similarity[{s + i}, {j}] is {blk[i, j]} (scores must be finite)")
        mate = p_codes[s:s + rows, None] == g_codes[None, :]
        b = np.where(mate, blk, -np.inf).max(axis=1)
        has[s:s + rows] = mate.any(axis=1)
        best[s:s + rows] = b
        rank[s:s + rows] = 1 + ((blk >= b[:, None]) & ~mate).sum(axis=1)
        top[s:s + rows] = blk.max(axis=1)
    return has, best, rank, top


def match_ranks(similarity, probe_labels, gallery_labels, *,
                allow_unmatched: bool = False) -> np.ndarray:
    """Rank (1 = best) of each probe's first correct gallery entry.

    The gallery is a list of entries (several per identity allowed, distractors
    welcome); a probe's rank is 1 + the number of entries of other identities scoring
    at least as high as its best mate: a tie with an impostor counts against the probe.
    Probes with no mate in the gallery raise ``ValueError`` (closed set) unless
    ``allow_unmatched``; their rank is then ``np.iinfo(np.int64).max`` (never a hit).
    """
    p, g = _encode_labels(probe_labels, gallery_labels)
    sim = _similarity(similarity, p.size, g.size)
    has, _, rank, _ = _mate_stats(sim, p, g)
    if not has.all():
        if not allow_unmatched:
            i = int(np.argmin(has))
            raise ValueError(f"probe {i} (label {np.asarray(probe_labels)[i]!r}) has no mate "
                             f"in the gallery; {int((~has).sum())} such probes in all "
                             "(closed-set identification; pass allow_unmatched=True to count "
                             "them as misses)")
        rank[~has] = np.iinfo(np.int64).max
    return rank


def cmc(similarity, probe_labels, gallery_labels, ranks: Iterable[int] = (1, 5, 10, 20), *,
        allow_unmatched: bool = False) -> Dict[int, float]:
    """Closed-set identification rate at each rank (cumulative match characteristic).

    rate(r) = fraction of probes whose rank (see :func:`match_ranks`, ties pessimistic)
    is ``<= r``; unmatched probes, when allowed, are misses and stay in the denominator.
    """
    rk = match_ranks(similarity, probe_labels, gallery_labels, allow_unmatched=allow_unmatched)
    out = {}
    for r in ranks:
        if int(r) < 1:
            raise ValueError(f"ranks must be >= 1, got {r}")
        out[int(r)] = float(np.mean(rk <= int(r)))
    return out


@dataclass(frozen=True, eq=False)
class OpenSetScores:
    """The scores open-set identification metrics are computed from.

    ``hits``: for each mated probe (its identity is in the gallery) whose best mate is
    within ``rank`` (ties pessimistic), that mate's score; mated probes outside the rank
    are never counted as identified. ``n_mated`` counts all mated probes. ``unmated``:
    each unmated probe's best gallery score. At threshold t (accept when score > t):
    FPIR(t) = #(unmated > t) / n_unmated, TPIR(t) = #(hits > t) / n_mated.
    """

    hits: np.ndarray
    n_mated: int
    unmated: np.ndarray
    rank: int

    def tpir_at_fpir(self, fpirs: Iterable[float] = (0.3, 0.2, 0.1, 0.01)
                     ) -> Dict[float, OperatingPoint]:
        """Exact TPIR at each FPIR, by the same order statistics as :func:`tar_at_far`."""
        fpirs = _check_rates(fpirs, "fpirs")
        k_max = max(allowed_false_accepts(f, self.unmated.size) for f in fpirs)
        top = _top_sorted(self.unmated, min(k_max, self.unmated.size - 1) + 1)
        return _operating_points(np.sort(self.hits), self.n_mated, top,
                                 self.unmated.size, fpirs)

    def curve(self, max_points: Optional[int] = None
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(fpir, tpir, thresholds)``: every operating point, from (0, 0) to FPIR 1.

        The last point has TPIR = rank-``rank`` identification rate of the mated probes.
        """
        u = np.sort(self.unmated)
        fpr, tpr, thr = _roc_points(np.sort(self.hits), self.n_mated, u, u.size)
        if max_points is not None:
            fpr, tpr, thr = _subsample_curve(fpr, tpr, thr, max_points, u.size)
        return fpr, tpr, thr

    def auc(self) -> float:
        """Trapezoidal area under :meth:`curve` over FPIR in [0, 1] (ties count half)."""
        return _mann_whitney_auc(np.sort(self.hits), self.n_mated, self.unmated)


def open_set_scores(similarity, probe_labels, gallery_labels, rank: int = 1,
                    unmated_label: Optional[int] = -1) -> OpenSetScores:
    """Split probes into mated and unmated and extract the scores the metrics need.

    A probe is unmated when its label is ``unmated_label`` (integer labels only) or does
    not occur in the gallery. The gallery must not itself use ``unmated_label``.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    pl = np.asarray(probe_labels)
    gl = np.asarray(gallery_labels)
    p, g = _encode_labels(pl, gl)
    sim = _similarity(similarity, p.size, g.size)
    sentinel = np.zeros(p.size, bool)
    if unmated_label is not None and pl.dtype.kind in "iu":
        sentinel = pl == unmated_label
        if gl.dtype.kind in "iu" and (gl == unmated_label).any():
            raise ValueError(f"gallery labels contain the unmated label {unmated_label}")
    has, best, rk, top = _mate_stats(sim, p, g)
    mated = has & ~sentinel
    unmated = ~mated
    if not mated.any() or not unmated.any():
        raise ValueError(f"open-set identification needs mated and unmated probes, got "
                         f"{int(mated.sum())} mated and {int(unmated.sum())} unmated")
    hit = mated & (rk <= rank)
    return OpenSetScores(hits=best[hit], n_mated=int(mated.sum()), unmated=top[unmated],
                         rank=int(rank))


def tpir_at_fpir(similarity, probe_labels, gallery_labels,
                 fpirs: Iterable[float] = (0.3, 0.2, 0.1, 0.01), rank: int = 1,
                 unmated_label: Optional[int] = -1) -> Dict[float, OperatingPoint]:
    """Open-set TPIR at each FPIR (QMUL-SurvFace); see :class:`OpenSetScores`."""
    return open_set_scores(similarity, probe_labels, gallery_labels, rank,
                           unmated_label).tpir_at_fpir(fpirs)


def tpir_fpir_curve(similarity, probe_labels, gallery_labels, rank: int = 1,
                    unmated_label: Optional[int] = -1, max_points: Optional[int] = None
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole TPIR-FPIR curve; see :meth:`OpenSetScores.curve`."""
    return open_set_scores(similarity, probe_labels, gallery_labels, rank,
                           unmated_label).curve(max_points)


def tpir_fpir_auc(similarity, probe_labels, gallery_labels, rank: int = 1,
                  unmated_label: Optional[int] = -1) -> float:
    """Area under the TPIR-FPIR curve over FPIR in [0, 1]; see :meth:`OpenSetScores.auc`."""
    return open_set_scores(similarity, probe_labels, gallery_labels, rank,
                           unmated_label).auc()
