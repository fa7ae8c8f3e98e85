"""``ijbc`` and ``ijbc-tiny-templates``: IJB-C 1:1 template verification, TAR at FAR 1e-7..1e-1
(paper Tables 1-2, Fig. 6a), on insightface's IJB-C layout::

    <root>/loose_crop/<img>.jpg
    <root>/meta/ijbc_face_tid_mid.txt          img tid mid            (one line per face)
    <root>/meta/ijbc_template_pair_label.txt   tid1 tid2 label        (1 genuine, 0 impostor)
    <root>/meta/ijbc_name_5pts_score.txt       img x1 y1 ... x5 y5 faceness

(``prefix`` ``ijbb`` reads IJB-B's files of the same layout.) Each face is aligned by its
five points (left eye, right eye, nose, mouth corners) onto the model's template
(:func:`ranface.align.templates.template_for` at the model's input size; 'dlib' for the
face-api ResNet-29, else 'arcface'), embedded flip-sum and L2-normalised, optionally
multiplied by its faceness score (``faceness``). A *template* feature is built as
insightface does: average the faces of each media (``mid``) within the template, sum the
media averages, L2-normalise (:func:`template_features`). Template pairs are scored by
cosine with a blocked matrix product (:func:`iter_pair_scores`: 1024 first-templates
against all templates, then the pairs' entries gathered; no Python loop over pairs) and
streamed into :class:`~ranface.eval.metrics.StreamingTarAtFar` (exact; memory bounded by
the top 10% of impostors).

``ijbc`` follows insightface's IJB evaluation (``recognition/_evaluation_/ijb``): its meta
files, its template pooling, its pair list. Deliberate difference: TAR is read at the
lowest threshold whose achieved FAR <= the target (exact order statistics); insightface
takes the ROC point whose FPR is nearest the target, which may lie above it.

**ijbc-tiny-templates**: a tiny-face variant on insightface's layout, *not* the paper's
IJB-C TinyFace (that is ``ijbc-tiny``, :mod:`.ijbc_tiny`, built from the 1:1 covariate
protocol's files with 158,338 genuine and 39,584,639 impostor face-level comparisons).
Its genuine comparisons are face to face but its impostors template to template, a far
smaller set, so its low-FAR TARs do not compare with Tables 1-2. Its rule:

* tiny face: eye-midpoint to mouth-midpoint distance of its five points (in the
  landmark file's pixels, i.e. the loose crop's) within ``[min_px, max_px]`` = [10, 30],
  both inclusive (:func:`ranface.align.select.lr_select` with the project's
  :data:`~ranface.align.select.LR_BAND`, the rule ``prepare`` uses);
* subject: templates joined by a genuine (label-1) pair belong to one subject (connected
  components over all label-1 pairs of the pair file; a template in no genuine pair is
  its own subject). The meta files carry no subject ids;
* genuine comparisons: every unordered pair of distinct tiny faces of the same subject
  (each tiny face is an anchor paired with every other tiny face of its subject), scored
  face to face; pairs from the same media (``mid``) are left out unless
  ``same_media_genuine`` (frames of one video are near-duplicates);
* impostor comparisons: the pair file's label-0 template pairs whose two templates both
  hold at least one tiny face, each template rebuilt from its tiny faces only
  (media-average, sum, normalise) — the protocol's own negative pairs restricted to the
  tiny subset, as the paper keeps the protocol's negatives.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ...errors import ConfigError, DataError, ProtocolError
from ..features import SkipLog, embed_images
from ..report import curve, far_label, fmt_rate, md_table, method_label, plot_curves
from ...align.select import LR_BAND
from . import EvalContext, Protocol, base_result, register_protocol
from .common import check_listed, operating_points, read_columns, require, to_float, to_int

__all__ = ["IjbcOptions", "IjbcTinyOptions", "IjbMeta", "read_ijb_meta", "template_features",
           "iter_pair_scores", "score_pairs", "subjects_from_pairs", "IjbcProtocol",
           "IjbcTinyProtocol", "FARS"]

FARS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class IjbcOptions:
    prefix: str = "ijbc"  # meta/<prefix>_face_tid_mid.txt ...; ijbb for IJB-B
    images: str = "loose_crop"
    meta: str = "meta"
    flip: bool = True
    faceness: bool = False  # multiply each face's feature by its detector score
    template: str = "auto"  # alignment template: auto | arcface | dlib
    fars: List[float] = field(default_factory=lambda: list(FARS))
    score_rows: int = 1024  # templates per matrix-product block when scoring pairs
    color: str = ""  # "" : the model's own channel order


@dataclass
class IjbcTinyOptions(IjbcOptions):
    min_px: float = LR_BAND[0]  # eye-to-mouth distance band of a tiny face (inclusive)
    max_px: float = LR_BAND[1]
    same_media_genuine: bool = False  # also pair tiny faces of the same media


@dataclass
class IjbMeta:
    """The three meta files, joined per face row of ``face_tid_mid``."""

    names: List[str]
    tids: np.ndarray  # (N,) template id of each face row
    mids: np.ndarray  # (N,) media id
    lines: np.ndarray  # (N,) line in face_tid_mid
    landmarks: np.ndarray  # (N, 5, 2), NaN where the row has no landmarks (skipped)
    faceness: np.ndarray  # (N,)
    pair_t1: np.ndarray
    pair_t2: np.ndarray
    pair_label: np.ndarray  # bool
    files: Dict[str, str]


def _meta_files(root: str, o: IjbcOptions) -> Dict[str, str]:
    m = os.path.join(root, o.meta)
    return {"faces": os.path.join(m, f"{o.prefix}_face_tid_mid.txt"),
            "pairs": os.path.join(m, f"{o.prefix}_template_pair_label.txt"),
            "landmarks": os.path.join(m, f"{o.prefix}_name_5pts_score.txt"),
            "images": os.path.join(root, o.images)}


def _read_pairs(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tid1 tid2 label`` lines; a fast vectorised parse for 15M-line files, with the
    line-by-line reader as fallback to name the first bad line."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ProtocolError(path, f"cannot read file ({exc.strerror or exc})") from None
    with warnings.catch_warnings():  # text-mode fromstring warns on a bad token, then stops
        warnings.simplefilter("ignore")
        try:
            arr = np.fromstring(data, dtype=np.int64, sep=" ")
        except ValueError:
            arr = np.zeros(1, np.int64)
    lines = data.splitlines()
    n_lines = sum(1 for ln in lines if ln.strip())
    # Exactly three tokens on every non-blank line (token totals alone can hide a 2 + 4).
    # numpy saturates out-of-range numbers to the int64 limits: those go the slow way too.
    lim = np.iinfo(np.int64)
    if arr.size == 3 * n_lines and all(len(ln.split()) in (0, 3) for ln in lines) and not (
            arr.size and (arr.max() == lim.max or arr.min() == lim.min)):
        a = arr.reshape(-1, 3)
        if np.isin(a[:, 2], (0, 1)).all():
            return a[:, 0], a[:, 1], a[:, 2] == 1
    t1, t2, lab = [], [], []
    for no, tok in read_columns(path, 3, "tid1 tid2 label"):
        t1.append(to_int(tok[0], path, no, "template id"))
        t2.append(to_int(tok[1], path, no, "template id"))
        v = to_int(tok[2], path, no, "label")
        if v not in (0, 1):
            raise ProtocolError(path, f"label must be 0 or 1, got {v}", f"line {no}")
        lab.append(v == 1)
    return np.array(t1, np.int64), np.array(t2, np.int64), np.array(lab, bool)


def read_ijb_meta(root: str, o: IjbcOptions, skips: Optional[SkipLog] = None) -> IjbMeta:
    """Parse and join the meta files; every malformed line names its file and line."""
    skips = skips if skips is not None else SkipLog()
    files = _meta_files(root, o)
    names, tids, mids, lines = [], [], [], []
    for no, tok in read_columns(files["faces"], 3, "img tid mid"):
        names.append(tok[0])
        tids.append(to_int(tok[1], files["faces"], no, "template id"))
        mids.append(to_int(tok[2], files["faces"], no, "media id"))
        lines.append(no)
    if not names:
        raise ProtocolError(files["faces"], "lists no faces")
    lmk: Dict[str, Tuple[np.ndarray, float]] = {}
    for no, tok in read_columns(files["landmarks"], 12, "img x1 y1 x2 y2 ... x5 y5 faceness"):
        vals = [to_float(t, files["landmarks"], no, "landmark value") for t in tok[1:]]
        lmk[tok[0]] = (np.array(vals[:10]).reshape(5, 2), vals[10])
    n = len(names)
    landmarks = np.full((n, 5, 2), np.nan)
    faceness = np.zeros(n)
    for i, name in enumerate(names):
        got = lmk.get(name)
        if got is None:
            skips.handle(ProtocolError(files["landmarks"], f"no landmarks for face {name!r} "
                                       f"({os.path.basename(files['faces'])} line {lines[i]})"))
            continue
        landmarks[i], faceness[i] = got
    t1, t2, lab = _read_pairs(files["pairs"])
    if t1.size == 0:
        raise ProtocolError(files["pairs"], "lists no template pairs")
    return IjbMeta(names, np.array(tids, np.int64), np.array(mids, np.int64),
                   np.array(lines, np.int64), landmarks, faceness, t1, t2, lab, files)


def template_features(feats: np.ndarray, tids: np.ndarray, mids: np.ndarray,
                      weights: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Template features the insightface IJB way. Returns (template ids, T x D).

    Within a template, faces of the same media are averaged; the media averages are
    summed (so each media counts once, however many frames it has) and the sum is
    L2-normalised. ``weights`` (e.g. faceness scores) multiply each face first.
    """
    from scipy.sparse import csr_matrix

    # float32 throughout (470k faces x 512 dims: sums of a few hundred unit vectors), and
    # sparse averaging matrices instead of gathering and reducing the feature rows.
    f = np.asarray(feats, np.float32)
    t, m = np.asarray(tids), np.asarray(mids)
    n = t.size
    order = np.lexsort((m, t))
    ts, ms = t[order], m[order]
    new_media = np.ones(n, bool)
    new_media[1:] = (ts[1:] != ts[:-1]) | (ms[1:] != ms[:-1])
    media_of = np.empty(n, np.int64)
    media_of[order] = np.cumsum(new_media) - 1
    n_media = int(new_media.sum())
    count = np.bincount(media_of, minlength=n_media).astype(np.float32)
    w = 1.0 / count[media_of]
    if weights is not None:
        w = w * np.asarray(weights, np.float32)
    media = csr_matrix((w.astype(np.float32), (media_of, np.arange(n))), shape=(n_media, n)) @ f
    media_tid = ts[new_media]
    new_t = np.ones(n_media, bool)
    new_t[1:] = media_tid[1:] != media_tid[:-1]
    t_of = np.cumsum(new_t) - 1
    tf = csr_matrix((np.ones(n_media, np.float32), (t_of, np.arange(n_media))),
                    shape=(int(new_t.sum()), n_media)) @ media
    tf = np.asarray(tf, np.float32)
    norm = np.linalg.norm(tf, axis=1, keepdims=True)
    tf /= np.where(norm > 0, norm, 1.0)
    return media_tid[new_t], tf


# A matrix product computes a pair's score ~100x cheaper per flop than a gathered dot
# product (BLAS vs random row reads; measured on 2 CPU cores: 53 vs 0.3 GFLOP/s). A block
# is multiplied out when it has at least rows x cols / GEMM_DENSITY pairs, else gathered.
GEMM_DENSITY = 128


def iter_pair_scores(tfeat: np.ndarray, p1: np.ndarray, p2: np.ndarray, rows: int = 1024
                     ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Cosine scores of template pairs (row indices ``p1``, ``p2`` into ``tfeat``).

    Pairs are bucketed by their first template in blocks of ``rows`` templates. A
    bucket dense in pairs (IJB-C: 15.6M pairs over 23k templates) is scored by one
    matrix product of its templates against the second templates it uses, whose entries
    are gathered per pair; a sparse bucket by gathered dot products (16k at a time).
    No Python loop over pairs. Yields (pair indices, scores) per bucket.
    """
    if rows < 1:
        raise ConfigError(f"score_rows must be >= 1, got {rows}")
    p1 = np.asarray(p1)
    p2 = np.asarray(p2)
    bucket = p1 // rows
    order = np.argsort(bucket, kind="stable")
    edges = np.searchsorted(bucket[order], np.arange(int(bucket.max(initial=0)) + 2))
    for b in range(edges.size - 1):
        sel = order[edges[b]:edges[b + 1]]
        if sel.size == 0:
            continue
        r0 = b * rows
        a = tfeat[r0:r0 + rows]
        cols, col_of = np.unique(p2[sel], return_inverse=True)
        if sel.size * GEMM_DENSITY >= a.shape[0] * cols.size:
            block = a @ tfeat[cols].T
            yield sel, block[p1[sel] - r0, col_of]
        else:
            out = np.empty(sel.size, np.float32)
            for s in range(0, sel.size, 16384):
                k = sel[s:s + 16384]
                out[s:s + k.size] = np.einsum("ij,ij->i", tfeat[p1[k]], tfeat[p2[k]])
            yield sel, out


def score_pairs(tfeat: np.ndarray, p1: np.ndarray, p2: np.ndarray, rows: int = 1024
                ) -> np.ndarray:
    """All scores of :func:`iter_pair_scores`, in pair order."""
    out = np.empty(len(p1), np.float32)
    for sel, s in iter_pair_scores(tfeat, p1, p2, rows):
        out[sel] = s
    return out


def subjects_from_pairs(t1: np.ndarray, t2: np.ndarray, label: np.ndarray,
                        templates: np.ndarray) -> Dict[int, int]:
    """Subject id of each template: connected components of the genuine-pair graph."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids = np.unique(np.concatenate([templates, t1, t2]))
    a = np.searchsorted(ids, t1[label])
    b = np.searchsorted(ids, t2[label])
    g = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(ids.size, ids.size))
    _, comp = connected_components(g, directed=False)
    return dict(zip(ids.tolist(), comp.tolist()))


def _template_kind(o: IjbcOptions, ctx: EvalContext) -> str:
    if o.template != "auto":
        return o.template
    return "dlib" if ctx.backbone_name.startswith("resnet29_dlib") else "arcface"


def _aligner(meta: IjbMeta, kind: str, size: Tuple[int, int]):
    from ...align.templates import template_for
    from ...align.transform import estimate_similarity, warp_face

    dst = template_for(tuple(size), kind)
    images = meta.files["images"]

    def prepare(img: np.ndarray, i: int) -> np.ndarray:
        try:
            m = estimate_similarity(meta.landmarks[i], dst)
        except ValueError as exc:
            raise DataError(os.path.join(images, meta.names[i]), f"cannot align ({exc})",
                            f"landmarks of face_tid_mid line {meta.lines[i]}") from None
        return warp_face(img, m, tuple(size))

    return prepare


def _check_images(meta: IjbMeta, skips: SkipLog) -> np.ndarray:
    """Faces whose image exists and has landmarks; the rest are errors or counted skips."""
    images = meta.files["images"]
    ok = np.isfinite(meta.landmarks).all(axis=(1, 2))
    missing = [i for i in range(len(meta.names))
               if ok[i] and not os.path.isfile(os.path.join(images, meta.names[i]))]
    if missing and skips.on_error != "skip":
        i = missing[0]
        more = f"; {len(missing)} listed images are missing in all" if len(missing) > 1 else ""
        raise ProtocolError(os.path.join(images, meta.names[i]), "image not found (listed in "
                            f"{os.path.basename(meta.files['faces'])} line {meta.lines[i]}){more}")
    for i in missing:
        skips.record(f"{os.path.join(images, meta.names[i])}: image not found")
    ok[missing] = False
    return ok


def _known_pairs(meta: IjbMeta, skips: SkipLog) -> np.ndarray:
    """Pairs whose two templates appear in face_tid_mid; a dangling template id is an
    error naming the pair, or (skip) its pairs are counted and dropped."""
    known = np.isin(meta.pair_t1, meta.tids) & np.isin(meta.pair_t2, meta.tids)
    if not known.all():
        k = int(np.argmin(known))
        t = meta.pair_t1[k] if meta.pair_t1[k] not in set(meta.tids.tolist()) else meta.pair_t2[k]
        n_bad = int((~known).sum())
        msg = (f"template {t} has no face in {os.path.basename(meta.files['faces'])}; "
               f"{n_bad} pair(s) name unknown templates")
        if skips.on_error != "skip":
            raise ProtocolError(meta.files["pairs"], msg, f"pair {k + 1}")
        skips.record(f"{meta.files['pairs']} (pair {k + 1}): {msg}", n_bad)
    return known


def _pair_rows(template_ids: np.ndarray, t1: np.ndarray, t2: np.ndarray
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row of each pair's templates in the sorted ``template_ids``, and whether both
    templates are there."""
    if template_ids.size == 0:
        z = np.zeros(t1.size, np.int64)
        return z, z, np.zeros(t1.size, bool)
    r1 = np.searchsorted(template_ids, t1).clip(0, template_ids.size - 1)
    r2 = np.searchsorted(template_ids, t2).clip(0, template_ids.size - 1)
    return r1, r2, (template_ids[r1] == t1) & (template_ids[r2] == t2)


@register_protocol("ijbc")
class IjbcProtocol(Protocol):
    Options = IjbcOptions
    title = "IJB-C 1:1 template verification"
    provenance = ("insightface recognition/_evaluation_/ijb (meta/ files, media-averaged "
                  "templates); differs: TAR at the achieved FAR <= target, not the nearest "
                  "ROC point")

    def validate_root(self, root: str, options: Any = None) -> None:
        o = options or self.Options()
        if o.template not in ("auto", "arcface", "dlib"):
            raise ConfigError(f"template must be auto, arcface or dlib, got {o.template!r}")
        f = _meta_files(root, o)
        require(root, [(os.path.relpath(f["images"], root), "dir"),
                       *[(os.path.relpath(f[k], root), "file")
                         for k in ("faces", "pairs", "landmarks")]], f"{o.prefix} (insightface)")

    def _embed(self, ctx: EvalContext, meta: IjbMeta, o: IjbcOptions, want: np.ndarray,
               skips: SkipLog) -> Tuple[np.ndarray, np.ndarray]:
        emb = ctx.embedder(o.flip)
        prepare = _aligner(meta, _template_kind(o, ctx), emb.input_size)
        paths = [os.path.join(meta.files["images"], n) for n in meta.names]
        feats = embed_images(emb, paths, color=o.color or None, skips=skips, prepare=prepare,
                             wanted={"": want}, workers=ctx.workers, progress=ctx.progress,
                             desc=self.name)
        return feats[""], feats.ok & want

    def run(self, ctx: EvalContext, root: str, options: IjbcOptions) -> Dict[str, Any]:
        from ..metrics import StreamingTarAtFar

        o = options
        skips = SkipLog(ctx.on_error)
        result = base_result(self.name, ctx, root, o)
        meta = read_ijb_meta(root, o, skips)
        check_listed(meta.names, meta.files["faces"], meta.files["images"], ctx.allow_outside_root,
                     [f"line {n}" for n in meta.lines])
        usable = _check_images(meta, skips)
        feats, ok = self._embed(ctx, meta, o, usable, skips)
        tids, tf = template_features(feats[ok], meta.tids[ok], meta.mids[ok],
                                     meta.faceness[ok] if o.faceness else None)
        known = _known_pairs(meta, skips)
        r1, r2, present = _pair_rows(tids, meta.pair_t1, meta.pair_t2)
        keep = known & present
        if (known & ~present).any():  # every face of a template was skipped
            skips.record(f"{meta.files['pairs']}: {int((known & ~present).sum())} pair(s) "
                         "with a template whose faces were all skipped", 0)
        lab = meta.pair_label
        n_imp = int((~lab & keep).sum())
        if n_imp == 0 or not (lab & keep).any():
            raise ProtocolError(meta.files["pairs"], "need genuine and impostor pairs to score")
        st = StreamingTarAtFar(o.fars, max_impostors=n_imp)
        idx = np.flatnonzero(keep)
        for sel, s in iter_pair_scores(tf, r1[idx], r2[idx], o.score_rows):
            st.add(s, lab[idx[sel]])
        self._finish(result, st, o)
        result["counts"] = {"scored": int(keep.sum()), "skipped": int((~keep).sum()),
                            "faces": len(meta.names), "faces_embedded": int(ok.sum()),
                            "faces_skipped": int(len(meta.names) - ok.sum()),
                            "templates": int(tids.size), "genuine": st.n_genuine,
                            "impostor": st.n_impostor}
        result["skipped_examples"] = skips.examples
        return result

    @staticmethod
    def _finish(result: Dict[str, Any], st, o: IjbcOptions) -> None:
        pts = st.result()
        fpr, tpr, _ = st.roc(max_points=300)
        result["metrics"] = {"fars": [far_label(f) for f in o.fars],
                             "tar": operating_points(pts),
                             "n_genuine": st.n_genuine, "n_impostor": st.n_impostor,
                             "level": "template"}
        result["curves"] = {"roc": curve(fpr, tpr, "FAR", "TAR", log_x=True, compare=True)}

    def markdown(self, result: Dict[str, Any]) -> str:
        m = result["metrics"]
        head = ["Method"] + m["fars"]
        row = [method_label(result)] + [fmt_rate(m["tar"][f]["tar"]) for f in m["fars"]]
        return md_table(head, [row]) + (
            f"\nTAR at FAR ({m.get('level', 'template')} level); {m['n_genuine']} genuine and "
            f"{m['n_impostor']} impostor comparisons; n/m: FAR below 1/impostors, not "
            "measurable.\n")

    def plots(self, result: Dict[str, Any], out_dir: str) -> List[str]:
        return [plot_curves({method_label(result): result["curves"]["roc"]},
                            os.path.join(out_dir, "roc.png"), f"ROC ({result['protocol']})")]

    def summary(self, result: Dict[str, Any]) -> Dict[str, str]:
        m = result["metrics"]
        return {f"TAR@{f}": fmt_rate(m["tar"][f]["tar"]) for f in m["fars"]}


@register_protocol("ijbc-tiny-templates")
class IjbcTinyProtocol(IjbcProtocol):
    Options = IjbcTinyOptions
    title = "IJB-C tiny faces, template impostors (not the paper's IJB-C TinyFace)"
    provenance = ("ranface's own variant on insightface's IJB-C layout: face-level genuine, "
                  "template-level label-0 impostors")

    def run(self, ctx: EvalContext, root: str, options: IjbcTinyOptions) -> Dict[str, Any]:
        from ...align.select import eye_mouth_distance, lr_select
        from ..metrics import StreamingTarAtFar

        o = options
        if o.min_px > o.max_px:
            raise ConfigError(f"min_px ({o.min_px}) must not exceed max_px ({o.max_px})")
        skips = SkipLog(ctx.on_error)
        result = base_result(self.name, ctx, root, o)
        meta = read_ijb_meta(root, o, skips)
        check_listed(meta.names, meta.files["faces"], meta.files["images"], ctx.allow_outside_root,
                     [f"line {n}" for n in meta.lines])
        usable = _check_images(meta, skips)
        with np.errstate(invalid="ignore"):
            dist = eye_mouth_distance(np.nan_to_num(meta.landmarks, nan=0.0))
        tiny = lr_select(dist, o.min_px, o.max_px) & np.isfinite(meta.landmarks).all(axis=(1, 2))
        if not tiny.any():
            raise ProtocolError(meta.files["landmarks"], f"no face has an eye-to-mouth distance "
                                f"in [{o.min_px}, {o.max_px}] px")
        feats, ok = self._embed(ctx, meta, o, usable & tiny, skips)
        rows = np.flatnonzero(ok)
        if rows.size == 0:
            raise ProtocolError(meta.files["images"], "no tiny face could be embedded")
        f = feats[rows]  # genuine: face-to-face cosines (faceness weights templates only)

        # Impostors: label-0 pairs between templates that hold tiny faces, from tiny faces only.
        tids, tf = template_features(feats[rows], meta.tids[rows], meta.mids[rows],
                                     meta.faceness[rows] if o.faceness else None)
        known = _known_pairs(meta, skips)
        r1, r2, present = _pair_rows(tids, meta.pair_t1, meta.pair_t2)
        imp = np.flatnonzero(known & present & ~meta.pair_label)
        if imp.size == 0:
            raise ProtocolError(meta.files["pairs"], "no impostor pair joins two templates "
                                "with tiny faces")
        st = StreamingTarAtFar(o.fars, max_impostors=int(imp.size))
        for sel, s in iter_pair_scores(tf, r1[imp], r2[imp], o.score_rows):
            st.add_impostor(s)

        # Genuine: unordered pairs of distinct tiny faces of one subject.
        subject = subjects_from_pairs(meta.pair_t1, meta.pair_t2, meta.pair_label, meta.tids)
        subj = np.array([subject[t] for t in meta.tids[rows]])
        name_code = np.unique(np.array(meta.names, dtype=object)[rows], return_inverse=True)[1]
        mids = meta.mids[rows]
        n_subjects = 0
        order = np.argsort(subj, kind="stable")
        starts = np.flatnonzero(np.r_[True, subj[order][1:] != subj[order][:-1]])
        for a, b in zip(starts, np.r_[starts[1:], order.size]):
            idx = order[a:b]
            if idx.size < 2:
                continue
            n_before = st.n_genuine
            for s0 in range(0, idx.size, 2048):
                blk = idx[s0:s0 + 2048]
                sim = f[blk] @ f[idx].T
                i, j = np.nonzero(np.arange(s0, s0 + blk.size)[:, None] < np.arange(idx.size))
                ii, jj = blk[i], idx[j]
                m = name_code[ii] != name_code[jj]
                if not o.same_media_genuine:
                    m &= mids[ii] != mids[jj]
                if m.any():
                    st.add_genuine(sim[i[m], j[m]])
            n_subjects += st.n_genuine > n_before
        if st.n_genuine == 0:
            raise ProtocolError(meta.files["pairs"], "no two tiny faces share a subject: no "
                                "genuine comparison")
        self._finish(result, st, o)
        result["counts"] = {"scored": st.n_genuine + st.n_impostor,
                            "skipped": skips.count, "faces": len(meta.names),
                            "faces_tiny": int(tiny.sum()), "faces_embedded": int(ok.sum()),
                            "faces_skipped": int((usable & tiny).sum() - ok.sum()),
                            "templates_tiny": int(tids.size), "subjects_with_genuine": n_subjects,
                            "genuine": st.n_genuine, "impostor": st.n_impostor,
                            "impostor_pairs_outside_tiny": int((~meta.pair_label).sum() - imp.size)}
        result["metrics"]["level"] = "genuine: face; impostor: template"
        result["metrics"]["rule"] = (
            f"tiny: eye-mouth distance in [{o.min_px}, {o.max_px}] px; genuine: distinct tiny "
            "faces of one subject (subjects = components of label-1 template pairs)"
            + ("" if o.same_media_genuine else ", different media") +
            "; impostor: label-0 template pairs, templates from tiny faces only")
        result["skipped_examples"] = skips.examples
        return result
