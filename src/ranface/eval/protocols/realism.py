"""``lr-realism``: how close synthesized LR faces are to real LR faces (issue 5, §3.2).

Given a folder of synthesized LR faces (a degrader's output, e.g. ``ranface synthesize``)
and the real LR pool (``prepare --lr-select 10:30``), all aligned alike, and embedded by a
frozen expert (the evaluated model):

* **Fréchet distance** between the Gaussians fitted to the expert embeddings of the two
  sets (FID's formula, in the face expert's space rather than Inception's):
  ``|mu_s - mu_r|^2 + Tr(C_s + C_r - 2 (C_s C_r)^(1/2))``. Lower = closer.
* **Domain classifier accuracy**: a logistic regression (real vs synthesized) on the
  embeddings, trained on half of each set and tested on the other half, both halves
  swapped and averaged (2-fold). 0.5 = indistinguishable, 1.0 = trivially separable.
  The two sets are subsampled to the same size so chance is exactly 0.5; the table gives
  the 95% range of a chance classifier's accuracy on that many test faces (binomial),
  so an accuracy inside it means "indistinguishable at this sample size".
* **Spread of the Fréchet distance**: ``bootstrap`` resamples of the faces of both sets
  (with replacement, seeded); the table gives the distance +- 1.96 bootstrap std (see
  :func:`frechet_bootstrap` for why not the percentile interval). Two degraders whose
  intervals overlap are not told apart by this pool.
* **Paired difference to a reference method** (with ``reference`` given: another method's
  twins of the same faces, e.g. bicubic's): FD(synth) - FD(reference) with a paired
  bootstrap interval (:func:`frechet_paired_bootstrap`: each resample draws the same HR
  faces for both methods and the same real faces), far narrower than comparing the two
  unpaired intervals, since most of each interval's width is the shared sampling of faces.
* **Identity preservation** (with ``hr`` given): mean cosine between the expert
  embedding of each HR face x and of its synthesized twin G(x) (same relative path).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

from ...config import path_field
from ...errors import ConfigError, ProtocolError
from ..features import SkipLog, embed_images, list_image_files
from ..report import md_table
from . import EvalContext, Protocol, base_result, register_protocol


@dataclass
class RealismOptions:
    synth: str = path_field()  # folder of synthesized LR faces (any depth)
    real: str = path_field()  # folder of real LR faces (any depth)
    hr: str = path_field()  # optional: the HR faces the synth folder was made from (same relative paths)
    max_images: int = 2000  # per set (seeded subsample); 0: all
    seed: int = 0
    label: str = ""  # name of the degrader in the report
    bootstrap: int = 200  # resamples for the Fréchet distance's interval; 0: none
    reference: str = path_field()  # optional: another method's twins of the same faces (paired difference)
    reference_label: str = ""


def _resolve(root: str, p: str) -> str:
    return p if os.path.isabs(p) else os.path.join(root, p)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b``."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(ca @ cb))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(ca + cb - 2.0 * covmean))


def frechet_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 200, seed: int = 0
                      ) -> Tuple[float, float, float, float]:
    """Sampling spread of the Fréchet distance: (std, lo, hi, bias) over ``resamples``
    bootstrap resamples of the rows of ``a`` and of ``b`` (each with replacement).

    The interval is the normal one, estimate +- 1.96 std, not the percentile interval: a
    resample repeats rows, which shrinks the effective sample and inflates the distance
    (Fréchet / FID are biased upwards at small n), so the bootstrap distribution sits above
    the estimate (seen on 1,200 vs 774 faces: percentile interval [0.0232, 0.0282] around
    0.0217). ``bias`` = mean of the resamples - estimate, reported beside it."""
    rng = np.random.default_rng(seed)
    vals = np.array([frechet_distance(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))])
                     for _ in range(int(resamples))])
    est = frechet_distance(a, b)
    sd = float(vals.std(ddof=1))
    return sd, est - 1.96 * sd, est + 1.96 * sd, float(vals.mean() - est)


def frechet_paired_bootstrap(real: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int = 200,
                             seed: int = 0) -> Dict[str, float]:
    """FD(real, a) - FD(real, b) for two methods' twins ``a``, ``b`` of the same faces (row i
    of both = the same HR face), with a paired bootstrap: each resample draws one set of
    face indices for both methods and one of the real faces. Returns ``diff`` (on the full
    sets), ``std`` of the resampled differences and ``ci95`` = diff +- 1.96 std (normal
    interval, as :func:`frechet_bootstrap`; the bias of each distance largely cancels);
    with fewer than 2 resamples ``std`` and ``ci95`` are None."""
    if len(a) != len(b):
        raise ValueError(f"paired sets differ in size ({len(a)} vs {len(b)})")
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(int(resamples)):
        i, j = rng.integers(0, len(a), len(a)), rng.integers(0, len(real), len(real))
        diffs.append(frechet_distance(real[j], a[i]) - frechet_distance(real[j], b[i]))
    diff = frechet_distance(real, a) - frechet_distance(real, b)
    if len(diffs) < 2:
        return {"diff": diff, "std": None, "ci95": None, "resamples": len(diffs)}
    sd = float(np.std(diffs, ddof=1))
    return {"diff": diff, "std": sd, "ci95": [diff - 1.96 * sd, diff + 1.96 * sd], "resamples": len(diffs)}


def chance_interval(n_test: int, z: float = 1.96) -> Tuple[float, float]:
    """95% range of the accuracy of a classifier that guesses (p = 0.5) on ``n_test``
    balanced test faces (normal approximation of the binomial)."""
    m = z * 0.5 / np.sqrt(max(1, n_test))
    return 0.5 - m, 0.5 + m


def domain_classifier_accuracy(real: np.ndarray, synth: np.ndarray, seed: int = 0,
                               steps: int = 300, l2: float = 1e-3) -> float:
    """2-fold held-out accuracy of a logistic regression telling real (1) from synth (0);
    equal class sizes (the larger set is subsampled)."""
    rng = np.random.default_rng(seed)
    n = min(len(real), len(synth))
    if n < 4:
        raise ValueError("need at least 4 faces in each set for the domain classifier")
    r = real[rng.permutation(len(real))[:n]]
    s = synth[rng.permutation(len(synth))[:n]]
    half = n // 2
    accs = []
    for fold in range(2):
        tr = slice(0, half) if fold == 0 else slice(half, n)
        te = slice(half, n) if fold == 0 else slice(0, half)
        x_tr = np.concatenate([r[tr], s[tr]])
        y_tr = np.concatenate([np.ones(len(r[tr])), np.zeros(len(s[tr]))])
        x_te = np.concatenate([r[te], s[te]])
        y_te = np.concatenate([np.ones(len(r[te])), np.zeros(len(s[te]))])
        mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
        x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
        w, b = np.zeros(x_tr.shape[1]), 0.0
        lr = 0.5
        for _ in range(steps):  # full-batch gradient descent on the logistic loss
            p = 1.0 / (1.0 + np.exp(-(x_tr @ w + b)))
            g = p - y_tr
            w -= lr * (x_tr.T @ g / len(y_tr) + l2 * w)
            b -= lr * float(g.mean())
        pred = (x_te @ w + b) > 0
        accs.append(float((pred == (y_te > 0.5)).mean()))
    return float(np.mean(accs))


def _subsample(paths: List[str], k: int, seed: int) -> List[str]:
    if k <= 0 or len(paths) <= k:
        return paths
    idx = np.sort(np.random.default_rng(seed).choice(len(paths), size=k, replace=False))
    return [paths[i] for i in idx]


@register_protocol("lr-realism")
class RealismProtocol(Protocol):
    Options = RealismOptions
    title = "Realism of synthesized LR faces against real LR faces"
    provenance = "ranface's own measure (no benchmark)"

    def validate_root(self, root: str, options: Any = None) -> None:
        o = options or RealismOptions()
        if not o.synth or not o.real:
            raise ConfigError("lr-realism needs --set synth=<synthesized LR folder> and real=<real LR folder>")
        missing = [p for p in (_resolve(root, o.synth), _resolve(root, o.real)) + (
            (_resolve(root, o.hr),) if o.hr else ()) + ((_resolve(root, o.reference),) if o.reference else ())
            if not os.path.isdir(p)]
        if missing:
            raise ProtocolError(root, "missing folder(s): " + ", ".join(missing))

    def _embed(self, ctx: EvalContext, folder: str, rels: List[str], skips: SkipLog) -> Tuple[np.ndarray, np.ndarray]:
        feats = embed_images(ctx.embedder(flip=False), [os.path.join(folder, r) for r in rels],
                             skips=skips, progress=ctx.progress, desc="realism")
        return feats[""], feats.ok

    def run(self, ctx: EvalContext, root: str, options: RealismOptions) -> Dict[str, Any]:
        o = options
        synth_dir, real_dir = _resolve(root, o.synth), _resolve(root, o.real)
        skips = SkipLog(ctx.on_error)
        synth_rels = _subsample(list_image_files(synth_dir, recursive=True), o.max_images, o.seed)
        real_rels = _subsample(list_image_files(real_dir, recursive=True), o.max_images, o.seed + 1)
        if len(synth_rels) < 4 or len(real_rels) < 4:
            raise ProtocolError(root, f"need at least 4 images in each set (synth {len(synth_rels)}, "
                                f"real {len(real_rels)})")
        fs, oks = self._embed(ctx, synth_dir, synth_rels, skips)
        fr, okr = self._embed(ctx, real_dir, real_rels, skips)
        fs, fr = fs[oks], fr[okr]
        n_test = 2 * min(len(fr), len(fs))  # both folds together test every kept face once
        metrics: Dict[str, Any] = {
            "frechet_distance": frechet_distance(fr, fs),
            "domain_accuracy": domain_classifier_accuracy(fr, fs, seed=o.seed),
            "domain_chance_ci95": [round(v, 4) for v in chance_interval(n_test)],
            "domain_test_faces": n_test,
        }
        if o.bootstrap > 0:
            sd, lo, hi, bias = frechet_bootstrap(fr, fs, o.bootstrap, o.seed)
            metrics.update({"frechet_std": sd, "frechet_ci95": [lo, hi], "frechet_bootstrap_bias": bias,
                            "frechet_bootstrap": int(o.bootstrap)})
        if o.reference:
            ref_dir = _resolve(root, o.reference)
            kept = [r for r, ok in zip(synth_rels, oks) if ok]
            absent = [r for r in kept if not os.path.exists(os.path.join(ref_dir, r))]
            if absent:
                raise ProtocolError(ref_dir, f"reference twins lack {len(absent)} of the synthesized faces "
                                    f"(e.g. {absent[0]}): a paired comparison needs the same faces")
            fref, okref = self._embed(ctx, ref_dir, kept, skips)
            if not okref.all():
                raise ProtocolError(ref_dir, f"{int((~okref).sum())} reference faces could not be read")
            pd = frechet_paired_bootstrap(fr, fs, fref, int(o.bootstrap), o.seed + 2)
            metrics["frechet_vs_reference"] = {**pd, "reference": o.reference_label or os.path.basename(
                os.path.normpath(ref_dir))}
        if o.hr:
            hr_dir = _resolve(root, o.hr)
            pairs = [r for r, ok in zip(synth_rels, oks) if ok and os.path.exists(os.path.join(hr_dir, r))]
            fh, okh = self._embed(ctx, hr_dir, pairs, skips)
            by_rel = {r: i for i, r in enumerate(r for r, ok in zip(synth_rels, oks) if ok)}
            twins = np.stack([fs[by_rel[r]] for r in pairs]) if pairs else np.zeros((0, fs.shape[1]))
            cos = np.sum(fh[okh] * twins[okh], axis=1) if len(pairs) else np.zeros(0)
            metrics["identity_cosine"] = float(cos.mean()) if cos.size else None
            metrics["identity_pairs"] = int(cos.size)
        result = base_result(self.name, ctx, root, o)
        result["metrics"] = metrics
        result["counts"] = {"scored": int(len(fs) + len(fr)), "skipped": int((~oks).sum() + (~okr).sum()),
                            "synth": int(len(fs)), "real": int(len(fr))}
        result["skipped_examples"] = skips.examples
        return result

    def markdown(self, result: Dict[str, Any]) -> str:
        return md_table(*self._table([result]))

    @staticmethod
    def _table(results: List[Dict[str, Any]]) -> Tuple[List[str], List[List[str]]]:
        head = ["LR synthesis", "Fréchet distance (expert space) ↓ [±1.96 bootstrap sd]",
                "domain classifier acc ↓ [chance 95%]", "identity cosine x vs G(x) ↑", "faces (synth / real)"]
        rows = []
        for r in results:
            m, c = r["metrics"], r["counts"]
            label = r["options"].get("label") or os.path.basename(os.path.normpath(r["options"].get("synth", "")))
            ic = m.get("identity_cosine")
            ci = m.get("frechet_ci95")
            fd = f"{m['frechet_distance']:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
            ch = m.get("domain_chance_ci95")
            da = f"{m['domain_accuracy']:.3f}" + (f" [{ch[0]:.3f}, {ch[1]:.3f}]" if ch else "")
            rows.append([label, fd, da,
                         "n/a" if ic is None else f"{ic:.3f}", f"{c['synth']} / {c['real']}"])
        return head, rows

    def summary(self, result: Dict[str, Any]) -> Dict[str, str]:
        m = result["metrics"]
        return {"frechet": f"{m['frechet_distance']:.4f}", "domain acc": f"{m['domain_accuracy']:.3f}",
                "identity cos": "n/a" if m.get("identity_cosine") is None else f"{m['identity_cosine']:.3f}"}


def realism_table(results: List[Dict[str, Any]]) -> str:
    """One Markdown table comparing several degraders (bicubic / random-degrade / MR-GAN)."""
    return md_table(*RealismProtocol._table(results))
