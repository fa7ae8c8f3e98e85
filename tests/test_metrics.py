"""Tests of the metrics engine: hand-computed cases, brute force and scikit-learn."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from ranface.eval import metrics as M
from ranface.eval.metrics import kfold_verification_accuracy

sk_metrics = pytest.importorskip("sklearn.metrics")


# ----------------------------------------------------------------------- TAR@FAR
GEN = [0.9, 0.8, 0.7, 0.6, 0.5]
IMP = [0.85, 0.75, 0.65, 0.55, 0.45, 0.4, 0.3, 0.2, 0.1, 0.0]


def test_tar_at_far_hand_computed():
    r = M.tar_at_far(GEN, IMP, fars=(0.05, 0.1, 0.2, 0.5, 1.0))
    # FAR 0.1 of 10 impostors: 1 false accept allowed, threshold = 2nd largest impostor.
    assert r[0.1].threshold == 0.75 and r[0.1].false_accepts == 1
    assert r[0.1].tar == pytest.approx(2 / 5) and r[0.1].achieved_far == 0.1
    assert r[0.2].threshold == 0.65 and r[0.2].tar == pytest.approx(3 / 5)
    assert r[0.5].threshold == 0.4 and r[0.5].tar == 1.0 and r[0.5].false_accepts == 5
    assert r[1.0].threshold == -math.inf and r[1.0].tar == 1.0 and r[1.0].achieved_far == 1.0
    # 0.05 * 10 < 1: below the resolution of 10 impostors.
    p = r[0.05]
    assert not p.measurable and p.tar is None and p.threshold is None
    assert r[0.1].measurable and r[0.1].n_impostor == 10 and r[0.1].n_genuine == 5


def test_tar_at_far_ties_are_rejected_and_far_never_exceeded():
    gen = [0.9, 0.8, 0.6, 0.5, 0.4]
    imp = [0.8, 0.8, 0.8, 0.5, 0.3, 0.2, 0.1, 0.1, 0.0, 0.0]
    r = M.tar_at_far(gen, imp, fars=(0.1, 0.2, 0.3))
    # One or two false accepts allowed, but accepting any 0.8 accepts all three of them.
    for f in (0.1, 0.2):
        assert r[f].threshold == 0.8 and r[f].false_accepts == 0 and r[f].achieved_far == 0.0
        assert r[f].tar == pytest.approx(1 / 5)  # the genuine 0.8 is tied: rejected too
    assert r[0.3].threshold == 0.5 and r[0.3].false_accepts == 3
    assert r[0.3].tar == pytest.approx(3 / 5)


def _brute_force(gen, imp, far):
    """Best TAR over every possible threshold with #(imp > t) <= far * n_imp."""
    cands = np.concatenate([[-np.inf], np.unique(np.concatenate([gen, imp]))])
    limit = Fraction(repr(far)) * imp.size
    best_tar, best_t = None, None
    for t in cands:
        if (imp > t).sum() <= limit:
            tar = (gen > t).mean()
            if best_tar is None or tar > best_tar or (tar == best_tar and t < best_t):
                best_tar, best_t = tar, t
    return best_tar, best_t


@pytest.mark.parametrize("seed", range(12))
def test_tar_at_far_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    gen = np.round(rng.normal(0.5, 0.2, rng.integers(3, 40)), 1)
    imp = np.round(rng.normal(0.2, 0.2, rng.integers(20, 120)), 1)
    fars = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.9)
    r = M.tar_at_far(gen, imp, fars)
    for f in fars:
        p = r[f]
        if f * imp.size < 1:
            assert not p.measurable
            continue
        tar, t = _brute_force(gen, imp, f)
        assert p.tar == pytest.approx(tar, abs=0) and p.threshold == t
        assert p.false_accepts == (imp > t).sum() and p.achieved_far <= f


def test_tar_at_far_matches_sklearn_roc():
    rng = np.random.default_rng(7)
    gen = rng.integers(30, 100, 500).astype(np.float32)
    imp = rng.integers(0, 70, 5000).astype(np.float32)
    y = np.r_[np.ones(gen.size), np.zeros(imp.size)]
    fpr, tpr, thr = sk_metrics.roc_curve(y, np.r_[gen, imp], drop_intermediate=False)
    fps = np.round(fpr * imp.size)
    fars = (1e-3, 1e-2, 0.05, 0.1, 0.5)
    r = M.tar_at_far(gen, imp, fars)
    for f in fars:
        expected = tpr[fps <= M.allowed_false_accepts(f, imp.size)].max()
        assert r[f].tar == expected


def test_far_exactly_representable_counts():
    # 1e-7 * 40e6 is 3.9999999999999996 in binary floating point; the decimal is 4.
    assert M.allowed_false_accepts(1e-7, 40_000_000) == 4
    assert M.allowed_false_accepts(0.3, 10) == 3
    assert M.allowed_false_accepts(0.7, 10) == 7
    assert M.allowed_false_accepts(1e-4, 9_999) == 0


def test_far_below_resolution_not_measurable_and_bad_input():
    r = M.tar_at_far([1.0, 2.0], np.arange(999.0), fars=(1e-3, 1e-2))
    assert not r[1e-3].measurable and r[1e-2].measurable
    with pytest.raises(ValueError, match="index 1"):
        M.tar_at_far([1.0, np.nan], [0.0])
    with pytest.raises(ValueError, match="no scores"):
        M.tar_at_far([], [0.0])
    with pytest.raises(ValueError, match="not in"):
        M.tar_at_far([1.0], [0.0], fars=(0.0,))


def test_tar_at_far_keeps_float32_and_is_exact_on_large_input():
    rng = np.random.default_rng(0)
    imp = rng.normal(0, 0.1, 2_000_000).astype(np.float32)
    gen = rng.normal(0.4, 0.15, 20_000).astype(np.float32)
    r = M.tar_at_far(gen, imp, (1e-6, 1e-4, 1e-2))
    srt = np.sort(imp)[::-1]
    for f in (1e-6, 1e-4, 1e-2):
        k = M.allowed_false_accepts(f, imp.size)
        t = srt[k]
        assert r[f].threshold == float(t)
        assert r[f].tar == (gen > t).mean()


# --------------------------------------------------------------------- streaming
@pytest.mark.parametrize("seed", range(5))
def test_streaming_equals_batch_with_ties(seed):
    rng = np.random.default_rng(100 + seed)
    blocks = []
    for _ in range(rng.integers(5, 30)):
        n = int(rng.integers(1, 400))
        scores = np.round(rng.normal(0, 1, n), 1).astype(np.float32)
        labels = rng.random(n) < 0.1
        scores[labels] += 1.5
        blocks.append((scores, labels))
    scores = np.concatenate([b[0] for b in blocks])
    labels = np.concatenate([b[1] for b in blocks])
    gen, imp = scores[labels], scores[~labels]
    fars = (1e-3, 1e-2, 0.05, 0.1)
    batch = M.tar_at_far(gen, imp, fars)
    st = M.StreamingTarAtFar(fars, max_impostors=imp.size + 17, min_buffer=1)
    peak = 0
    for s, lab in blocks:
        st.add(s, lab.astype(int))
        peak = max(peak, st.n_kept_impostors)
    assert st.result() == batch
    k = M.allowed_false_accepts(0.1, imp.size + 17) + 1
    assert peak <= 2 * k + 400  # pruned: never more than 2K plus one block
    assert st.n_kept_impostors <= k < imp.size
    # Feeding through add_genuine / add_impostor gives the same.
    st2 = M.StreamingTarAtFar(fars)
    for s, lab in blocks:
        st2.add_genuine(s[lab]) if lab.any() else None
        st2.add_impostor(s[~lab]) if (~lab).any() else None
    assert st2.result() == batch


def test_streaming_needs_the_bound_to_prune():
    # A running bound would keep the top ceil(0.5 * 10) + 1 = 6 of the first block (5..10);
    # after four more low scores FAR 0.5 of 14 needs the 8th largest, 3.0, already dropped.
    st = M.StreamingTarAtFar([0.5])
    st.add_impostor(np.arange(1.0, 11.0))
    st.add_impostor(np.full(4, -5.0))
    st.add_genuine([6.5, 3.0])
    r = st.result()[0.5]
    assert r.threshold == 3.0 and r.tar == 0.5 and r.false_accepts == 7
    bounded = M.StreamingTarAtFar([0.5], max_impostors=12, min_buffer=1)
    bounded.add_impostor(np.arange(1.0, 11.0))
    with pytest.raises(ValueError, match="max_impostors"):
        bounded.add_impostor(np.full(4, -5.0))


def test_streaming_roc_matches_full_roc_at_low_far():
    rng = np.random.default_rng(3)
    gen = rng.integers(40, 100, 300).astype(np.float64)
    imp = rng.integers(0, 80, 20_000).astype(np.float64)
    st = M.StreamingTarAtFar([0.01], max_impostors=imp.size, min_buffer=1)
    for b in np.array_split(imp, 13):
        st.add_impostor(b)
    st.add_genuine(gen)
    fpr_s, tpr_s, thr_s = st.roc()
    fpr, tpr, thr = M.roc_curve_points(gen, imp)
    assert fpr_s[-1] <= 0.011 and fpr_s.size > 5
    idx = np.searchsorted(-thr, -thr_s)
    np.testing.assert_array_equal(thr[idx], thr_s)
    np.testing.assert_array_equal(fpr[idx], fpr_s)
    np.testing.assert_array_equal(tpr[idx], tpr_s)


# -------------------------------------------------------------------- ROC and AUC
@pytest.mark.parametrize("seed", range(4))
def test_roc_curve_points_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    gen = rng.integers(0, 20, 200)
    imp = rng.integers(-5, 12, 700)
    fpr, tpr, thr = M.roc_curve_points(gen, imp)
    y = np.r_[np.ones(gen.size), np.zeros(imp.size)]
    sfpr, stpr, sthr = sk_metrics.roc_curve(y, np.r_[gen, imp], drop_intermediate=False)
    np.testing.assert_array_equal(thr, sthr)
    np.testing.assert_array_equal(fpr, sfpr)
    np.testing.assert_array_equal(tpr, stpr)
    auc = M.roc_auc(gen, imp)
    assert auc == pytest.approx(sk_metrics.roc_auc_score(y, np.r_[gen, imp]), abs=1e-12)
    assert auc == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-12)


def test_roc_auc_hand_computed():
    # Pairs (g, i): 3>1, 3>2, 2=2 (half), 2>1 -> 3.5 / 4.
    assert M.roc_auc([3.0, 2.0], [1.0, 2.0]) == 0.875


def test_roc_max_points_keeps_exact_tar_at_far_points():
    rng = np.random.default_rng(5)
    gen = rng.normal(1, 1, 2000)
    imp = rng.normal(0, 1, 50_000)
    fpr, tpr, thr = M.roc_curve_points(gen, imp)
    f2, t2, h2 = M.roc_curve_points(gen, imp, max_points=50)
    assert 2 < f2.size <= 50 and f2[0] == 0 and f2[-1] == 1 and t2[-1] == 1
    idx = np.searchsorted(-thr, -h2)
    np.testing.assert_array_equal(fpr[idx], f2)
    np.testing.assert_array_equal(tpr[idx], t2)
    assert np.all(np.diff(f2) >= 0) and np.all(np.diff(t2) >= 0)


# ----------------------------------------------------------------- k-fold accuracy
def test_best_accuracy_threshold_hand_computed():
    t, acc = M.best_accuracy_threshold([0.3, 0.4, 0.8], [0, 1, 1])
    assert t == pytest.approx(0.35) and acc == 1.0
    t, acc = M.best_accuracy_threshold([0.1, 0.3, 0.8, 0.95], [0, 0, 1, 1])
    assert t == pytest.approx(0.55) and acc == 1.0
    # All impostors: reject everything.
    assert M.best_accuracy_threshold([0.1, 0.2], [0, 0]) == (math.inf, 1.0)
    # All genuine: accept everything.
    assert M.best_accuracy_threshold([0.1, 0.2], [1, 1]) == (-math.inf, 1.0)


@pytest.mark.parametrize("seed", range(6))
def test_best_accuracy_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    s = np.round(rng.normal(0, 1, 60), 1)
    same = rng.random(60) < 0.5
    s[same] += 0.7
    t, acc = M.best_accuracy_threshold(s, same)
    grid = np.concatenate([[-np.inf], np.unique(s), np.arange(-5, 5, 0.01)])
    best = max(np.mean((s > g) == same) for g in grid)
    assert acc == best and np.mean((s > t) == same) == acc


def test_kfold_hand_computed_explicit_folds():
    scores = [0.9, 0.2, 0.6, 0.8, 0.95, 0.3, 0.1]
    same = [1, 0, 0, 1, 1, 0, 0]
    folds = [0, 0, 0, 1, 1, 1, 1]
    r = M.kfold_verification_accuracy(scores, same, folds=folds)
    # Fold 0 tested at t=0.55 (from fold 1): 0.6 impostor accepted -> 2/3.
    # Fold 1 tested at t=0.75 (from fold 0): all four right -> 1.
    np.testing.assert_allclose(r["thresholds"], [0.55, 0.75])
    np.testing.assert_allclose(r["fold_accuracies"], [2 / 3, 1.0])
    assert r["mean"] == pytest.approx(5 / 6)
    assert r["std"] == pytest.approx(1 / 6)  # population std, as insightface's np.std


def test_kfold_default_folds_match_sklearn_kfold_and_separable_is_perfect():
    n = 23
    folds = M._contiguous_folds(n, 10)
    for i, (_, test) in enumerate(pytest.importorskip("sklearn.model_selection")
                                  .KFold(10, shuffle=False).split(np.arange(n))):
        np.testing.assert_array_equal(np.flatnonzero(folds == i), test)
    rng = np.random.default_rng(1)
    same = rng.random(600) < 0.5
    scores = np.where(same, rng.uniform(0.6, 1.0, 600), rng.uniform(-1.0, 0.4, 600))
    r = M.kfold_verification_accuracy(scores, same)
    assert r["mean"] == 1.0 and r["std"] == 0.0 and r["fold_accuracies"].size == 10
    assert np.all((r["thresholds"] > 0.4) & (r["thresholds"] < 0.6))


# --------------------------------------------------------------------------- CMC
def test_cmc_hand_computed_with_pessimistic_ties():
    sim = np.array([[0.9, 0.1, 0.2, 0.3],
                    [0.5, 0.4, 0.6, 0.1],   # two impostors above the mate: rank 3
                    [0.7, 0.2, 0.7, 0.1]])  # tie with an impostor: rank 2
    ranks = M.match_ranks(sim, [1, 2, 3], [1, 2, 3, 4])
    np.testing.assert_array_equal(ranks, [1, 3, 2])
    r = M.cmc(sim, [1, 2, 3], [1, 2, 3, 4], ranks=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_cmc_multiple_entries_strings_and_unmatched():
    sim = np.array([[0.3, 0.8, 0.5], [0.9, 0.2, 0.1]])
    assert M.cmc(sim, ["a", "b"], ["a", "a", "b"], ranks=(1,)) == {1: 0.5}
    with pytest.raises(ValueError, match="no mate"):
        M.cmc(sim, ["a", "z"], ["a", "a", "b"])
    r = M.cmc(sim, ["a", "z"], ["a", "a", "b"], ranks=(1, 3), allow_unmatched=True)
    assert r == {1: 0.5, 3: 0.5}


def test_cmc_blocked_rows_equal_direct():
    rng = np.random.default_rng(2)
    sim = rng.integers(0, 5, (300, 20000)).astype(np.float32)  # > one row block
    gl = rng.integers(0, 500, 20000)
    pl = gl[rng.integers(0, 20000, 300)]
    ranks = M.match_ranks(sim, pl, gl)
    i = 257
    mate = gl == pl[i]
    best = sim[i][mate].max()
    assert ranks[i] == 1 + np.sum((sim[i] >= best) & ~mate)


# ---------------------------------------------------------------------- open set
OS_SIM = np.array([
    [0.9, 0.2, 0.1],    # label 1: hit 0.9
    [0.3, 0.6, 0.2],    # label 2: hit 0.6
    [0.5, 0.1, 0.4],    # label 3: mate at rank 2
    [0.35, 0.3, 0.2],   # label 1: hit 0.35
    [0.7, 0.1, 0.2],    # -1: top 0.7
    [0.2, 0.5, 0.1],    # 7 (not in gallery): top 0.5
    [0.3, 0.3, 0.3],    # -1: top 0.3
    [0.1, 0.05, 0.0],   # -1: top 0.1
    [0.4, 0.2, 0.0],    # -1: top 0.4
])
OS_PROBES = [1, 2, 3, 1, -1, 7, -1, -1, -1]
OS_GALLERY = [1, 2, 3]


def test_tpir_at_fpir_hand_computed():
    r = M.tpir_at_fpir(OS_SIM, OS_PROBES, OS_GALLERY, fpirs=(0.1, 0.2, 0.4, 0.6, 1.0))
    assert not r[0.1].measurable  # 5 unmated probes
    assert r[0.2].threshold == 0.5 and r[0.2].tar == 0.5 and r[0.2].false_accepts == 1
    assert r[0.4].threshold == 0.4 and r[0.4].tar == 0.5
    assert r[0.6].threshold == 0.3 and r[0.6].tar == 0.75
    assert r[1.0].tar == 0.75  # the mate at rank 2 never counts at rank 1
    r2 = M.tpir_at_fpir(OS_SIM, OS_PROBES, OS_GALLERY, fpirs=(0.6,), rank=2)
    assert r2[0.6].tar == 1.0


def test_tpir_fpir_curve_and_auc_hand_computed():
    fpir, tpir, thr = M.tpir_fpir_curve(OS_SIM, OS_PROBES, OS_GALLERY)
    np.testing.assert_allclose(fpir, [0, 0, .2, .2, .4, .6, .6, .8, 1])
    np.testing.assert_allclose(tpir, [0, .25, .25, .5, .5, .5, .75, .75, .75])
    # Area: 0.2 * 0.25 + 0.4 * 0.5 + 0.4 * 0.75.
    auc = M.tpir_fpir_auc(OS_SIM, OS_PROBES, OS_GALLERY)
    assert auc == pytest.approx(0.55, abs=1e-12)
    assert np.trapezoid(tpir, fpir) == pytest.approx(auc, abs=1e-12)


def test_open_set_needs_both_kinds_and_rejects_sentinel_in_gallery():
    with pytest.raises(ValueError, match="mated and unmated"):
        M.tpir_at_fpir(OS_SIM[:4], OS_PROBES[:4], OS_GALLERY)
    with pytest.raises(ValueError, match="unmated label"):
        M.open_set_scores(OS_SIM, OS_PROBES, [1, 2, -1])
    with pytest.raises(ValueError, match="shape"):
        M.cmc(OS_SIM.T, OS_PROBES, OS_GALLERY)


def test_paired_bootstrap_difference_against_hand_values_and_plain_loop():
    from ranface.eval.metrics import paired_bootstrap_difference

    a = np.array([1, 1, 1, 1, 0, 1, 1, 0, 1, 1], bool)
    b = np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 1], bool)
    r = paired_bootstrap_difference(a, b, n_boot=4000, seed=1)
    assert r["diff"] == pytest.approx(0.3)  # 8/10 - 5/10
    assert r["lo"] <= 0.3 <= r["hi"] and r["n"] == 10
    # independent loop: the same resampling, one replicate at a time
    rng = np.random.default_rng(1)
    d = a.astype(float) - b.astype(float)
    draw = rng.integers(0, 10, size=(4000, 10))
    reps = d[draw].mean(axis=1)
    assert r["lo"] == pytest.approx(np.quantile(reps, 0.025))
    assert r["hi"] == pytest.approx(np.quantile(reps, 0.975))
    # identical models: a zero-width interval at 0; A always right, B always wrong: 1
    z = paired_bootstrap_difference(a, a)
    assert (z["diff"], z["lo"], z["hi"]) == (0.0, 0.0, 0.0)
    one = paired_bootstrap_difference(np.ones(6, bool), np.zeros(6, bool), folds=[0, 0, 0, 1, 1, 1])
    assert (one["diff"], one["lo"], one["hi"]) == (1.0, 1.0, 1.0)
    # folds: mean of fold differences (unequal folds), resampled within each fold
    f = np.array([0] * 4 + [1] * 6)
    rf = paired_bootstrap_difference(a, b, folds=f, n_boot=500)
    assert rf["diff"] == pytest.approx((d[:4].mean() + d[4:].mean()) / 2)
    with pytest.raises(ValueError):
        paired_bootstrap_difference(a, b[:5])


def test_seeds_paired_bootstrap_against_hand_values_and_plain_loop():
    from ranface.eval.metrics import paired_bootstrap_difference, seeds_paired_bootstrap_difference

    rng = np.random.default_rng(5)
    a = rng.random((3, 12)) < np.array([[0.9], [0.6], [0.8]])
    b = rng.random((3, 12)) < 0.7
    folds = np.array([0] * 5 + [1] * 7)
    r = seeds_paired_bootstrap_difference(a, b, folds=folds, n_boot=300, seed=2)
    d = a.astype(float) - b.astype(float)
    per = [(d[s, :5].mean() + d[s, 5:].mean()) / 2 for s in range(3)]
    assert r["per_seed"] == pytest.approx(per) and r["diff"] == pytest.approx(np.mean(per))
    assert r["seed_std"] == pytest.approx(np.std(per, ddof=1)) and r["n_positive"] == sum(p > 0 for p in per)
    assert (r["n_seeds"], r["n"]) == (3, 12) and r["lo"] <= r["diff"] <= r["hi"]
    # independent loop, one replicate at a time, drawing in the function's order: the pair
    # draws of each fold (shared by all seeds), then the seeds
    g = np.random.default_rng(2)
    draws = [g.integers(0, 5, size=(300, 5)), g.integers(0, 7, size=(300, 7))]
    pick = g.integers(0, 3, size=(300, 3))
    reps = []
    for k in range(300):
        vals = []
        for s in pick[k]:
            f0 = d[s, :5][draws[0][k]].mean()
            f1 = d[s, 5:][draws[1][k]].mean()
            vals.append((f0 + f1) / 2)
        reps.append(np.mean(vals))
    assert r["lo"] == pytest.approx(np.quantile(reps, 0.025))
    assert r["hi"] == pytest.approx(np.quantile(reps, 0.975))
    # one seed: the one-seed paired bootstrap's point and (same draws) interval
    one = seeds_paired_bootstrap_difference(a[:1], b[:1], folds=folds, n_boot=400, seed=7)
    ref = paired_bootstrap_difference(a[0], b[0], folds=folds, n_boot=400, seed=7)
    assert (one["diff"], one["lo"], one["hi"]) == pytest.approx((ref["diff"], ref["lo"], ref["hi"]))
    assert one["seed_std"] == 0.0
    # seeds that disagree widen the interval beyond what each seed's pairs alone give
    agree = seeds_paired_bootstrap_difference(np.ones((3, 40)), np.vstack([np.zeros(40)] * 3))
    assert (agree["lo"], agree["hi"], agree["n_positive"]) == (1.0, 1.0, 3)
    split = seeds_paired_bootstrap_difference(np.vstack([np.ones(40), np.zeros(40)]), np.full((2, 40), 0.5))
    assert split["diff"] == 0.0 and split["lo"] == -0.5 and split["hi"] == 0.5 and split["n_positive"] == 1
    with pytest.raises(ValueError):
        seeds_paired_bootstrap_difference(a, b[:, :5])
    with pytest.raises(ValueError):
        seeds_paired_bootstrap_difference(a, b, folds=folds[:4])


def test_kfold_correct_matches_fold_accuracies():
    rng = np.random.default_rng(3)
    s = rng.normal(size=200)
    same = rng.random(200) < 0.5
    s[same] += 1.0
    k = kfold_verification_accuracy(s, same, n_folds=5)
    c = k["correct"].reshape(5, 40)
    assert np.allclose(c.mean(axis=1), k["fold_accuracies"])
