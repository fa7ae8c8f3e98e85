"""``survface``: QMUL-SurvFace (Cheng et al. 2018), paper Table 4.

Open-set identification (``parts`` includes ``identification``)::

    Face_Identification_Test_Set/gallery/
    Face_Identification_Test_Set/mated_probe/
    Face_Identification_Test_Set/unmated_probe/   every image: a probe of nobody in the gallery
    Face_Identification_Test_Set/gallery_img_ID_pairs.mat        gallery_set, gallery_ids
    Face_Identification_Test_Set/mated_probe_img_ID_pairs.mat    mated_probe_set, mated_probe_ids

The two ``.mat`` files are read from ``Face_Identification_Test_Set/`` or, where the
release keeps them there, ``Face_Identification_Evaluation/``.

Metric (Cheng et al. 2018, §5 "open-set face identification"; paper Table 4): at a
threshold t, a mated probe is a true positive identification when its true identity is
among the top ``rank`` (default 20) gallery entries *and* that mate's score is above t;
TPIR_r(t) = true positives / mated probes. An unmated probe is a false positive
identification when its best (rank-1) gallery score is above t; FPIR(t) = false
positives / unmated probes. The table reports TPIR20@FPIR = 0.3/0.2/0.1 (and 0.01) and
AUC = the area under the whole TPIR_r-FPIR curve for FPIR in [0, 1] (trapezoidal, ties
count half; its right end is the rank-r identification rate). ``gallery``: ``images``
(default) makes each gallery image one entry (several per identity, a mate's rank is
that of its best image); ``templates`` averages each identity's gallery features into
one L2-normalised template first, as several public SurvFace scripts do. Scores come
from :class:`~ranface.eval.metrics.OpenSetScores`, computed in probe blocks (each block
mixes mated and unmated probes, so the 200k x gallery similarity is never held at once;
the per-block scores are exact and simply concatenated).

Verification (``parts`` includes ``verification``)::

    Face_Verification_Test_Set/verification_images/
    Face_Verification_Test_Set/positive_pairs_names.mat   positive_pairs_names (N x 2)
    Face_Verification_Test_Set/negative_pairs_names.mat   negative_pairs_names (N x 2)

TAR at FAR 0.3/0.1/0.01/0.001, ROC AUC, and 10-fold accuracy (folds interleave the pairs
of each class, since the lists come sorted by class).

Follows the benchmark's own definitions (Cheng et al. 2018) rather than any one public
script; tests/test_protocols.py checks the numbers against those definitions written out
probe by probe. Deliberate choices: ties count against the probe; AUC is the exact area
(no FPIR grid); ``gallery: templates`` is an option, not the default.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...errors import ConfigError, ProtocolError
from ..features import SkipLog, embed_images, list_image_files
from ..report import (curve, far_label, fmt_pct, fmt_rate, md_table, method_label,
                      plot_curves)
from . import EvalContext, Protocol, base_result, register_protocol
from .common import (first_existing, listing, load_mat, mat_ints, mat_string_pairs,
                     mat_strings, operating_points)

__all__ = ["SurvFaceOptions", "SurvFaceProtocol", "blocked_open_set_scores",
           "identity_templates", "GALLERY_KINDS"]

ID_DIR = "Face_Identification_Test_Set"
ID_EVAL_DIR = "Face_Identification_Evaluation"
VER_DIR = "Face_Verification_Test_Set"
PARTS = ("identification", "verification")
GALLERY_KINDS = ("images", "templates")


def identity_templates(feats: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted identity ids, one L2-normalised mean feature per identity)."""
    uniq, inv = np.unique(ids, return_inverse=True)
    out = np.zeros((uniq.size, feats.shape[1]), np.float64)
    np.add.at(out, inv, feats)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.where(norm > 0, norm, 1.0)
    return uniq, out.astype(feats.dtype, copy=False)


@dataclass
class SurvFaceOptions:
    parts: List[str] = field(default_factory=lambda: list(PARTS))
    rank: int = 20  # TPIR counts a mate within the top `rank` gallery entries (benchmark: 20)
    gallery: str = "images"  # images: one entry per image | templates: one mean per identity
    fpirs: List[float] = field(default_factory=lambda: [0.3, 0.2, 0.1, 0.01])
    fars: List[float] = field(default_factory=lambda: [0.3, 0.1, 0.01, 0.001])
    flip: bool = True
    color: str = ""
    max_unmated: int = -1  # -1: all unmated probes; N >= 0: the first N (sorted)


def _mat_path(root: str, name: str) -> Optional[str]:
    rel = first_existing(root, [os.path.join(ID_DIR, name), os.path.join(ID_EVAL_DIR, name)])
    return None if rel is None else os.path.join(root, rel)


def blocked_open_set_scores(probe: np.ndarray, probe_labels: np.ndarray, gallery: np.ndarray,
                            gallery_labels: np.ndarray, rank: int = 1,
                            budget: int = 1 << 24):
    """:func:`metrics.open_set_scores` over probe blocks, merged exactly.

    ``probe_labels`` -1 marks unmated probes. Blocks pair a slice of the mated probes
    with a slice of the unmated ones, since each call needs both kinds.
    """
    from ..metrics import OpenSetScores, open_set_scores

    mated = np.flatnonzero(probe_labels != -1)
    unmated = np.flatnonzero(probe_labels == -1)
    if mated.size == 0 or unmated.size == 0:
        raise ValueError("open-set identification needs mated and unmated probes")
    rows = max(2, budget // max(gallery.shape[0], 1))
    n_blocks = min(max(1, -(-probe.shape[0] // rows)), mated.size, unmated.size)
    hits, unm, n_mated = [], [], 0
    for mb, ub in zip(np.array_split(mated, n_blocks), np.array_split(unmated, n_blocks)):
        idx = np.concatenate([mb, ub])
        sim = probe[idx] @ gallery.T
        s = open_set_scores(sim, probe_labels[idx], gallery_labels, rank=rank, unmated_label=-1)
        hits.append(s.hits)
        unm.append(s.unmated)
        n_mated += s.n_mated
    return OpenSetScores(hits=np.concatenate(hits), n_mated=n_mated,
                         unmated=np.concatenate(unm), rank=rank)


def _pct_label(f: str) -> str:
    """'0.3' -> '30', '0.01' -> '1', '0.001' -> '0.1' (the benchmark's column titles)."""
    return f"{100 * float(f):g}"


@register_protocol("survface")
class SurvFaceProtocol(Protocol):
    Options = SurvFaceOptions
    title = "QMUL-SurvFace"
    provenance = ("metric: Cheng et al. 2018 benchmark definitions (TPIR20@FPIR, AUC); files: "
                  "the release's .mat lists")

    def validate_root(self, root: str, options: Any = None) -> None:
        o = options or SurvFaceOptions()
        bad = [p for p in o.parts if p not in PARTS]
        if bad or not o.parts:
            raise ConfigError(f"parts must be a non-empty list of {PARTS}, got {o.parts}")
        if int(o.rank) < 1:
            raise ConfigError(f"rank must be >= 1, got {o.rank}")
        if o.gallery not in GALLERY_KINDS:
            raise ConfigError(f"gallery must be one of {GALLERY_KINDS}, got {o.gallery!r}")
        need: List[Tuple[str, str]] = []
        missing: List[str] = []
        if "identification" in o.parts:
            need += [(os.path.join(ID_DIR, d), "dir")
                     for d in ("gallery", "mated_probe", "unmated_probe")]
            for name in ("gallery_img_ID_pairs.mat", "mated_probe_img_ID_pairs.mat"):
                if _mat_path(root, name) is None:
                    missing.append(f"{ID_DIR}/{name} (or {ID_EVAL_DIR}/{name})")
        if "verification" in o.parts:
            need += [(os.path.join(VER_DIR, "verification_images"), "dir"),
                     (os.path.join(VER_DIR, "positive_pairs_names.mat"), "file"),
                     (os.path.join(VER_DIR, "negative_pairs_names.mat"), "file")]
        for rel, kind in need:
            p = os.path.join(root, rel)
            if not (os.path.isdir(p) if kind == "dir" else os.path.isfile(p)):
                missing.append(rel + ("/" if kind == "dir" else ""))
        if missing:
            raise ProtocolError(root, f"not a QMUL-SurvFace root: missing {len(missing)} of its "
                                f"files: {listing(missing, 50)}")

    def run(self, ctx: EvalContext, root: str, options: SurvFaceOptions) -> Dict[str, Any]:
        o = options
        skips = SkipLog(ctx.on_error)
        result = base_result(self.name, ctx, root, o)
        emb = ctx.embedder(o.flip)
        counts: Dict[str, int] = {"scored": 0, "skipped": 0}
        metrics: Dict[str, Any] = {"parts": list(o.parts)}
        curves: Dict[str, Any] = {}
        if "identification" in o.parts:
            self._identification(ctx, emb, root, o, skips, metrics, curves, counts)
        if "verification" in o.parts:
            self._verification(ctx, emb, root, o, skips, metrics, curves, counts)
        counts["skipped"] += skips.count
        result.update(metrics=metrics, curves=curves, counts=counts,
                      skipped_examples=skips.examples)
        return result

    def _listed(self, root: str, name: str, set_key: str, ids_key: str, sub: str,
                skips: SkipLog) -> Tuple[List[str], np.ndarray]:
        path = _mat_path(root, name)
        assert path is not None  # validate_root checked
        mat = load_mat(path)
        names = mat_strings(mat, set_key, path)
        ids = mat_ints(mat, ids_key, path, len(names))
        if (ids == -1).any():
            raise ProtocolError(path, "id -1 is reserved for unmated probes", f"key {ids_key}")
        files, keep = [], []
        for k, n in enumerate(names):
            f = os.path.join(root, ID_DIR, sub, n)
            if os.path.isfile(f):
                files.append(f)
                keep.append(k)
            else:
                skips.handle(ProtocolError(f, f"image not found (listed in {path} as "
                                           f"{set_key}[{k}])"))
        return files, ids[keep]

    def _identification(self, ctx, emb, root, o, skips, metrics, curves, counts) -> None:
        g_files, g_ids = self._listed(root, "gallery_img_ID_pairs.mat", "gallery_set",
                                      "gallery_ids", "gallery", skips)
        m_files, m_ids = self._listed(root, "mated_probe_img_ID_pairs.mat", "mated_probe_set",
                                      "mated_probe_ids", "mated_probe", skips)
        u_dir = os.path.join(root, ID_DIR, "unmated_probe")
        u_files = [os.path.join(u_dir, f) for f in list_image_files(u_dir)]
        if o.max_unmated >= 0:
            u_files = u_files[:o.max_unmated]
        files = g_files + m_files + u_files
        feats = embed_images(emb, files, color=o.color or None, skips=skips,
                             workers=ctx.workers, progress=ctx.progress,
                             desc="survface identification")
        f, ok = feats[""], feats.ok
        n_g, n_m = len(g_files), len(m_files)
        g_ok = ok[:n_g]
        p_ok = ok[n_g:]
        labels = np.concatenate([m_ids, np.full(len(u_files), -1, np.int64)])[p_ok]
        probe = f[n_g:][p_ok]
        gallery, gal_ids = f[:n_g][g_ok], g_ids[g_ok]
        if o.gallery == "templates":
            gal_ids, gallery = identity_templates(gallery, gal_ids)
        r = int(o.rank)
        try:
            s = blocked_open_set_scores(probe, labels, gallery, gal_ids, rank=r)
        except ValueError as exc:
            raise ProtocolError(os.path.join(root, ID_DIR), str(exc)) from None
        fp, tp, _ = s.curve(max_points=300)
        n_unmated_mate = int((labels != -1).sum() - s.n_mated)  # mated ids absent from gallery
        metrics["identification"] = {
            "rank": r, "gallery": o.gallery, "fpirs": [far_label(x) for x in o.fpirs],
            f"tpir{r}": operating_points(s.tpir_at_fpir(o.fpirs)), f"auc_tpir{r}": s.auc(),
            "n_mated": s.n_mated, "n_unmated": int(s.unmated.size),
            "n_gallery": int(gallery.shape[0]), "n_gallery_images": int(g_ok.sum()),
            "mated_without_gallery_mate": n_unmated_mate}
        curves["tpir-fpir"] = curve(fp, tp, "FPIR", f"TPIR{r} (mate within rank {r})",
                                    log_x=True, compare=True)
        counts["scored"] += int(labels.size)
        counts.update(identification_probes=int(labels.size), gallery=int(g_ok.sum()),
                      identification_images_skipped=int(len(files) - ok.sum()))

    def _verification(self, ctx, emb, root, o, skips, metrics, curves, counts) -> None:
        from ..metrics import (kfold_verification_accuracy, roc_auc, roc_curve_points,
                               tar_at_far)

        base = os.path.join(root, VER_DIR)
        img_dir = os.path.join(base, "verification_images")
        pairs: List[Tuple[str, str]] = []
        same: List[bool] = []
        where: List[str] = []
        for fname, key, lab in (("positive_pairs_names.mat", "positive_pairs_names", True),
                                ("negative_pairs_names.mat", "negative_pairs_names", False)):
            path = os.path.join(base, fname)
            got = mat_string_pairs(load_mat(path), key, path)
            pairs += got
            same += [lab] * len(got)
            where += [f"{path} ({key}[{k}])" for k in range(len(got))]
        uniq: Dict[str, int] = {}
        for a, b in pairs:
            for n in (a, b):
                uniq.setdefault(n, len(uniq))
        names = list(uniq)
        exists = np.array([os.path.isfile(os.path.join(img_dir, n)) for n in names])
        if not exists.all():
            first = int(np.argmin(exists))
            k = next(i for i, (a, b) in enumerate(pairs) if names[first] in (a, b))
            msg = f"image not found (named in {where[k]})"
            if skips.on_error != "skip":
                more = f"; {int((~exists).sum())} missing in all" if (~exists).sum() > 1 else ""
                raise ProtocolError(os.path.join(img_dir, names[first]), msg + more)
            for n in np.flatnonzero(~exists):
                skips.record(f"{os.path.join(img_dir, names[n])}: image not found")
        feats = embed_images(emb, [os.path.join(img_dir, n) for n in names],
                             color=o.color or None, skips=skips, wanted={"": exists},
                             workers=ctx.workers, progress=ctx.progress,
                             desc="survface verification")
        ok = feats.ok & exists
        i1 = np.array([uniq[a] for a, _ in pairs])
        i2 = np.array([uniq[b] for _, b in pairs])
        lab = np.array(same)
        valid = ok[i1] & ok[i2]
        if not (lab & valid).any() or not (~lab & valid).any():
            raise ProtocolError(base, "need scorable positive and negative pairs")
        f = feats[""]
        s = np.einsum("ij,ij->i", f[i1[valid]], f[i2[valid]])
        lab = lab[valid]
        folds = np.zeros(lab.size, np.int64)
        for cls in (True, False):
            idx = np.flatnonzero(lab == cls)
            folds[idx] = np.arange(idx.size) % 10
        k = kfold_verification_accuracy(s, lab, folds=folds)
        fpr, tpr, _ = roc_curve_points(s[lab], s[~lab], max_points=300)
        metrics["verification"] = {
            "fars": [far_label(x) for x in o.fars],
            "tar": operating_points(tar_at_far(s[lab], s[~lab], o.fars)),
            "auc": roc_auc(s[lab], s[~lab]), "acc": k["mean"], "acc_std": k["std"],
            "n_positive": int(lab.sum()), "n_negative": int((~lab).sum())}
        curves["roc"] = curve(fpr, tpr, "FAR", "TAR", log_x=True, compare=True)
        counts["scored"] += int(valid.sum())
        counts.update(verification_pairs=int(valid.sum()),
                      verification_pairs_skipped=int((~valid).sum()))

    def markdown(self, result: Dict[str, Any]) -> str:
        m = result["metrics"]
        out = []
        if "identification" in m:
            i = m["identification"]
            r = i["rank"]
            head = ["Method"] + [f"TPIR{r}@FPIR {_pct_label(f)}%"
                                 for f in i["fpirs"]] + [f"AUC (TPIR{r}-FPIR)"]
            row = [method_label(result)] + [fmt_pct(i[f"tpir{r}"][f]["tar"], digits=1)
                                            for f in i["fpirs"]] + \
                [fmt_pct(i[f"auc_tpir{r}"], digits=1)]
            gal = (f"{i['n_gallery']} gallery images" if i["gallery"] == "images" else
                   f"{i['n_gallery']} identity templates (mean of {i['n_gallery_images']} "
                   "gallery images)")
            out.append("## Identification (open set)\n\n" + md_table(head, [row]) + (
                f"\n{i['n_mated']} mated and {i['n_unmated']} unmated probes, {gal}; "
                f"TPIR{r}: true identity within rank {r} and above the threshold (%); FPIR: "
                f"unmated probes whose rank-1 score is above it; AUC: area under the "
                f"TPIR{r}-FPIR curve, FPIR in [0, 1] (%).\n"))
        if "verification" in m:
            v = m["verification"]
            head = ["Method"] + [f"TAR@FAR={f}" for f in v["fars"]] + ["AUC (%)", "acc (%)"]
            row = [method_label(result)] + [fmt_rate(v["tar"][f]["tar"]) for f in v["fars"]] + \
                [fmt_pct(v["auc"]), fmt_pct(v["acc"], v["acc_std"])]
            out.append("## Verification\n\n" + md_table(head, [row]) + (
                f"\n{v['n_positive']} positive and {v['n_negative']} negative pairs.\n"))
        return "\n".join(out)

    def plots(self, result: Dict[str, Any], out_dir: str) -> List[str]:
        out = []
        label = method_label(result)
        if "tpir-fpir" in result["curves"]:
            out.append(plot_curves({label: result["curves"]["tpir-fpir"]},
                                   os.path.join(out_dir, "tpir_fpir.png"),
                                   f"TPIR{result['metrics']['identification']['rank']}-FPIR"))
        if "roc" in result["curves"]:
            out.append(plot_curves({label: result["curves"]["roc"]},
                                   os.path.join(out_dir, "roc.png"), "ROC (verification)"))
        return out

    def summary(self, result: Dict[str, Any]) -> Dict[str, str]:
        m = result["metrics"]
        row: Dict[str, str] = {}
        if "identification" in m:
            i = m["identification"]
            r = i["rank"]
            for f in i["fpirs"]:
                row[f"TPIR{r}@FPIR={f}"] = fmt_pct(i[f"tpir{r}"][f]["tar"], digits=1)
            row[f"AUC TPIR{r}"] = fmt_pct(i[f"auc_tpir{r}"], digits=1)
        if "verification" in m:
            v = m["verification"]
            for f in v["fars"]:
                row[f"TAR@FAR={f}"] = fmt_rate(v["tar"][f]["tar"])
            row["ver AUC"] = fmt_pct(v["auc"])
        return row
