"""``ijbc-tiny``: IJB-C TinyFace as the paper built it (§4.1, Tables 1-2), face-level
1:1 verification, TAR at FAR 1e-7..1e-1, on the IJB-C release's own files::

    <root>/images/img/*.jpg, <root>/images/frames/*.png     the release's photos and frames
    <root>/protocols/ijbc_11_covariate_probe_reference.csv   header TEMPLATE_ID,SUBJECT_ID,
                                                            FILENAME,SIGHTING_ID,FACE_X,...
    <root>/protocols/ijbc_11_covariate_matches.csv           tid1,tid2 (no header)
    <landmarks>                                              TEMPLATE_ID x1 y1 ... x5 y5

The covariate protocol (Maze et al. 2018) makes every template one face (one row of the
reference file) and lists 47,404,001 template pairs; a pair of two subjects is an
impostor comparison. IJB-C ships boxes, not landmarks: ``landmarks`` is a whitespace
file giving each covariate face's five points (left eye, right eye, nose, left and
right mouth corner) in the original image's pixels, or ``mtcnn``: ranface detects them
as the paper did, with its MTCNN on each face's box padded by half its size (upscaled
x1, x2, x3 to reach the smallest faces; the detection nearest the box centre) and writes
them as ``covariate_5pts.txt`` beside the lists, to be passed as ``landmarks`` next
time. With ``mtcnn`` a face the detector misses is no tiny face, and the impostor pairs
that need it are dropped and counted, as the paper adopts "the detected LR faces". The
rule, from the paper's text:

* tiny face: eye-midpoint to mouth-midpoint distance within the project's band
  :data:`ranface.align.select.LR_BAND` (10..30 px, both inclusive,
  :func:`~ranface.align.select.lr_select`), as for the real LR training faces;
* genuine comparisons ("faces with same identity are selected for each anchor"): every
  unordered pair of distinct tiny faces of one SUBJECT_ID (paper: 158,338);
* impostor comparisons ("the same 39,584,639 negative pairs"): every pair of the
  matches file whose two faces have different SUBJECT_IDs, tiny or not;
* scores: cosine of the two faces' flip-sum embeddings, each face aligned by its five
  points (no template pooling: every template is one face).

The selected face list and both pair lists are written (``tiny_faces.txt``,
``genuine_pairs.txt``, ``impostor_pairs.txt``) to ``lists_dir`` or ``<out>/lists``, and
the counts are reported beside the paper's. A face without landmarks cannot be measured
or aligned: it is an error naming it, or (``--on-error skip``) its pairs are counted and
dropped. TAR@FAR uses :class:`~ranface.eval.metrics.StreamingTarAtFar` (threshold: the
lowest whose achieved FAR <= the target).
"""
from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...align.select import LR_BAND
from ...config import path_field
from ...errors import ConfigError, DataError, ProtocolError
from ..features import SkipLog, embed_images
from ..report import fmt_rate, md_table, method_label
from . import EvalContext, base_result, register_protocol
from .common import read_columns, require, to_float, to_int
from .ijbc import FARS, IjbcProtocol, iter_pair_scores

__all__ = ["IjbcTinyFaceOptions", "IjbcTinyFaceProtocol", "CovariateFaces",
           "read_covariate_reference", "read_covariate_matches", "tiny_face_pairs",
           "PAPER_GENUINE", "PAPER_IMPOSTOR", "REFERENCE_CSV", "MATCHES_CSV"]

PAPER_GENUINE = 158_338
PAPER_IMPOSTOR = 39_584_639
REFERENCE_CSV = "ijbc_11_covariate_probe_reference.csv"
MATCHES_CSV = "ijbc_11_covariate_matches.csv"
_NEEDED_COLUMNS = ("TEMPLATE_ID", "SUBJECT_ID", "FILENAME")
_BOX_COLUMNS = ("FACE_X", "FACE_Y", "FACE_WIDTH", "FACE_HEIGHT")


@dataclass
class IjbcTinyFaceOptions:
    images: str = "images"  # FILENAME (img/..., frames/...) is relative to this folder
    protocols: str = "protocols"
    # 5-point file (default: in the root) or "mtcnn": detect them in each face's box
    landmarks: str = path_field("protocols/ijbc_11_covariate_5pts.txt", keywords=("mtcnn",))
    min_px: float = LR_BAND[0]
    max_px: float = LR_BAND[1]
    flip: bool = True
    template: str = "auto"  # alignment template: auto | arcface | dlib
    fars: List[float] = field(default_factory=lambda: list(FARS))
    score_rows: int = 1024
    color: str = ""
    lists_dir: str = path_field()  # where the face and pair lists go ("": <out>/lists)


@dataclass
class CovariateFaces:
    """The covariate reference file, one face per template, sorted by template id."""

    tids: np.ndarray
    subjects: np.ndarray
    filenames: List[str]
    lines: np.ndarray
    boxes: np.ndarray  # (N, 4) FACE_X, FACE_Y, FACE_WIDTH, FACE_HEIGHT; NaN where absent


def _paths(root: str, o: IjbcTinyFaceOptions) -> Dict[str, str]:
    lm = o.landmarks if os.path.isabs(o.landmarks) or o.landmarks == "mtcnn" else \
        os.path.join(root, o.landmarks)
    return {"reference": os.path.join(root, o.protocols, REFERENCE_CSV),
            "matches": os.path.join(root, o.protocols, MATCHES_CSV),
            "landmarks": lm, "images": os.path.join(root, o.images)}


def read_covariate_reference(path: str) -> CovariateFaces:
    """``ijbc_11_covariate_probe_reference.csv``: columns found by their header names."""
    try:
        fh = open(path, "r", encoding="utf-8", newline="")
    except OSError as exc:
        raise ProtocolError(path, f"cannot read file ({exc.strerror or exc})") from None
    tids, subs, names, lines, boxes = [], [], [], [], []
    with fh:
        try:
            rows = csv.reader(fh)
            header = [h.strip().upper() for h in next(rows, [])]
            missing = [c for c in _NEEDED_COLUMNS if c not in header]
            if missing:
                raise ProtocolError(path, f"header lacks column(s) {', '.join(missing)} "
                                    f"(expected {','.join(_NEEDED_COLUMNS)},...)", "line 1")
            ti, si, fi = (header.index(c) for c in _NEEDED_COLUMNS)
            bi = [header.index(c) if c in header else -1 for c in _BOX_COLUMNS]
            for no, row in enumerate(rows, 2):
                if not row or not "".join(row).strip():
                    continue
                if len(row) <= max(ti, si, fi):
                    raise ProtocolError(path, f"expected at least {max(ti, si, fi) + 1} "
                                        f"columns, got {len(row)}", f"line {no}")
                tids.append(to_int(row[ti], path, no, "TEMPLATE_ID"))
                subs.append(to_int(row[si], path, no, "SUBJECT_ID"))
                names.append(row[fi].strip())
                lines.append(no)
                boxes.append([_maybe_float(row[i]) if 0 <= i < len(row) else np.nan for i in bi])
        except UnicodeDecodeError:
            raise ProtocolError(path, "not a UTF-8 text file") from None
    if not tids:
        raise ProtocolError(path, "lists no faces")
    t = np.array(tids, np.int64)
    order = np.argsort(t, kind="stable")
    ts = t[order]
    dup = np.flatnonzero(ts[1:] == ts[:-1])
    if dup.size:
        k = order[dup[0] + 1]
        raise ProtocolError(path, f"TEMPLATE_ID {t[k]} has a second row (a covariate "
                            "template is one face)", f"line {lines[k]}")
    return CovariateFaces(ts, np.array(subs, np.int64)[order], [names[k] for k in order],
                          np.array(lines, np.int64)[order],
                          np.array(boxes, np.float64).reshape(-1, 4)[order])


def _maybe_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        return float("nan")
    return v if np.isfinite(v) else float("nan")


def detect_landmarks(paths: List[str], boxes: np.ndarray, rows: np.ndarray, ctx: EvalContext,
                     skips: SkipLog, pad: float = 0.5) -> np.ndarray:
    """Five points (original pixels) of each face in ``rows``, by MTCNN on its box padded
    by ``pad`` x its larger side; NaN where the box is absent, the image unreadable or
    no face is found. The detection whose box centre is nearest the given box's wins."""
    from ...align.pipeline import FaceAligner
    from ...data.image import read_image

    aligner = FaceAligner(upscales=(1, 2, 3), min_face_size=12.0, device=ctx.device)
    out = np.full((len(paths), 5, 2), np.nan)
    for k in rows:
        x, y, w, h = boxes[k]
        if not (np.isfinite(boxes[k]).all() and w > 0 and h > 0):
            continue
        try:
            img = read_image(paths[k])
        except DataError as exc:
            skips.handle(exc)
            continue
        p = pad * max(w, h)
        x0, y0 = int(max(0, np.floor(x - p))), int(max(0, np.floor(y - p)))
        x1 = int(min(img.shape[1], np.ceil(x + w + p)))
        y1 = int(min(img.shape[0], np.ceil(y + h + p)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        det = aligner.detect(img[y0:y1, x0:x1])
        if not len(det):
            continue
        centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2 + [x0, y0]
        i = int(np.argmin(np.linalg.norm(centres - [x + w / 2, y + h / 2], axis=1)))
        out[k] = det.landmarks[i] + [x0, y0]
    return out


def read_covariate_matches(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """``tid1,tid2`` lines (47M in the release): a vectorised parse, with a line-by-line
    fallback that names the first bad line."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ProtocolError(path, f"cannot read file ({exc.strerror or exc})") from None
    if _one_comma_per_line(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                arr = np.fromstring(data.replace(b",", b" "), dtype=np.int64, sep=" ")
            except ValueError:
                arr = np.zeros(1, np.int64)
        n_lines = data.count(b"\n") + (not data.endswith(b"\n"))
        lim = np.iinfo(np.int64)
        if arr.size == 2 * n_lines and not (arr.max() == lim.max or arr.min() == lim.min):
            a = arr.reshape(-1, 2)
            return a[:, 0], a[:, 1]
    lines = data.splitlines()  # the slow path: find and name the first bad line
    t1, t2 = [], []
    for no, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        tok = raw.decode("utf-8", "replace").split(",")
        if len(tok) != 2:
            raise ProtocolError(path, f"expected 2 comma-separated columns 'tid1,tid2', got "
                                f"{len(tok)}", f"line {no}")
        t1.append(to_int(tok[0].strip(), path, no, "template id"))
        t2.append(to_int(tok[1].strip(), path, no, "template id"))
    if not t1:
        raise ProtocolError(path, "lists no template pairs")
    return np.array(t1, np.int64), np.array(t2, np.int64)


def _one_comma_per_line(data: bytes) -> bool:
    """Every line (no blank ones) holds exactly one comma: checked on byte positions,
    without splitting 47M lines into Python objects."""
    if not data.strip():
        return False
    b = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(b == ord("\n"))
    if not data.endswith(b"\n"):
        ends = np.r_[ends, b.size]
    commas = np.flatnonzero(b == ord(","))
    per_line = np.diff(np.searchsorted(commas, np.r_[-1, ends]))
    return bool((per_line == 1).all())


def _read_landmarks(path: str) -> Dict[int, np.ndarray]:
    out: Dict[int, np.ndarray] = {}
    for no, tok in read_columns(path, 11, "TEMPLATE_ID x1 y1 x2 y2 ... x5 y5"):
        tid = to_int(tok[0], path, no, "TEMPLATE_ID")
        out[tid] = np.array([to_float(t, path, no, "landmark value") for t in tok[1:]]
                            ).reshape(5, 2)
    return out


def tiny_face_pairs(subjects: np.ndarray, tiny: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Row pairs (i < j) of distinct tiny faces with the same subject: the genuine set."""
    rows = np.flatnonzero(tiny)
    order = rows[np.argsort(subjects[rows], kind="stable")]
    s = subjects[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    a_parts, b_parts = [], []
    for a, b in zip(starts, np.r_[starts[1:], order.size]):
        grp = np.sort(order[a:b])
        if grp.size < 2:
            continue
        i, j = np.triu_indices(grp.size, 1)
        a_parts.append(grp[i])
        b_parts.append(grp[j])
    if not a_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(a_parts), np.concatenate(b_parts)


def _write_pairs(path: str, tids: np.ndarray, a: np.ndarray, b: np.ndarray,
                 chunk: int = 1 << 20) -> None:
    """``tid1 tid2`` lines, written atomically in chunks (39.5M impostor rows: the ids'
    strings are made once per template and joined per chunk, not formatted per row)."""
    from ...io_utils import atomic_open

    names = [str(int(t)) for t in tids]
    with atomic_open(path, "w") as fh:
        for s in range(0, len(a), chunk):
            fh.write("".join(f"{names[i]} {names[j]}\n"
                             for i, j in zip(a[s:s + chunk].tolist(), b[s:s + chunk].tolist())))


@register_protocol("ijbc-tiny")
class IjbcTinyFaceProtocol(IjbcProtocol):
    Options = IjbcTinyFaceOptions
    title = "IJB-C TinyFace 1:1 face-level verification (paper §4.1, Tables 1-2)"
    provenance = ("the paper's rule (§4.1) on NIST's IJB-C 1:1 covariate protocol files; "
                  "no public code: pair lists are written so others can compare")

    def validate_root(self, root: str, options: Any = None) -> None:
        o = options or self.Options()
        if o.template not in ("auto", "arcface", "dlib"):
            raise ConfigError(f"template must be auto, arcface or dlib, got {o.template!r}")
        if o.min_px > o.max_px:
            raise ConfigError(f"min_px ({o.min_px}) must not exceed max_px ({o.max_px})")
        p = _paths(root, o)
        need = [(os.path.relpath(p["images"], root), "dir"),
                (os.path.relpath(p["reference"], root), "file"),
                (os.path.relpath(p["matches"], root), "file")]
        if o.landmarks != "mtcnn":
            need.append((p["landmarks"] if os.path.isabs(o.landmarks) else o.landmarks, "file"))
        try:
            require(root, need, "covariate-protocol IJB-C")
        except ProtocolError as exc:
            if o.landmarks == "mtcnn" or os.path.isfile(p["landmarks"]):
                raise
            raise ProtocolError(root, f"{exc.problem} (five points: give landmarks=<file> or "
                                "landmarks=mtcnn to detect them)") from None

    def run(self, ctx: EvalContext, root: str, options: IjbcTinyFaceOptions) -> Dict[str, Any]:
        from ...align.select import eye_mouth_distance, lr_select
        from ..metrics import StreamingTarAtFar
        from .common import pair_cosines

        o = options
        skips = SkipLog(ctx.on_error)
        result = base_result(self.name, ctx, root, o)
        p = _paths(root, o)
        faces = read_covariate_reference(p["reference"])
        m1, m2 = read_covariate_matches(p["matches"])
        n = faces.tids.size
        paths = [os.path.join(p["images"], f) for f in faces.filenames]
        detect = o.landmarks == "mtcnn"
        if detect:
            landmarks = detect_landmarks(paths, faces.boxes, np.arange(n), ctx, skips)
        else:
            lmk = _read_landmarks(p["landmarks"])
            landmarks = np.full((n, 5, 2), np.nan)
            for k, t in enumerate(faces.tids.tolist()):
                got = lmk.get(t)
                if got is not None:
                    landmarks[k] = got
        has_lmk = np.isfinite(landmarks).all(axis=(1, 2))
        dist = np.full(n, np.nan)
        dist[has_lmk] = eye_mouth_distance(landmarks[has_lmk])
        tiny = lr_select(dist, o.min_px, o.max_px)

        # Matches -> rows; dangling template ids are errors (or counted, skipped).
        r1 = np.searchsorted(faces.tids, m1).clip(0, n - 1)
        r2 = np.searchsorted(faces.tids, m2).clip(0, n - 1)
        known = (faces.tids[r1] == m1) & (faces.tids[r2] == m2)
        if not known.all():
            k = int(np.argmin(known))
            t = m1[k] if faces.tids[r1[k]] != m1[k] else m2[k]
            msg = (f"template {t} is not in {REFERENCE_CSV}; {int((~known).sum())} pair(s) "
                   "name unknown templates")
            if skips.on_error != "skip":
                raise ProtocolError(p["matches"], msg, f"line {k + 1}")
            skips.record(f"{p['matches']} (line {k + 1}): {msg}", int((~known).sum()))
        imp = known & (faces.subjects[r1] != faces.subjects[r2])
        ga, gb = tiny_face_pairs(faces.subjects, tiny)
        n_imp_protocol, n_gen_rule = int(imp.sum()), int(ga.size)
        if n_gen_rule == 0:
            raise ProtocolError(p["landmarks"], f"no two faces of one subject have an "
                                f"eye-to-mouth distance in [{o.min_px}, {o.max_px}] px")
        if n_imp_protocol == 0:
            raise ProtocolError(p["matches"], "no pair joins two different subjects")

        lists = self._write_lists(ctx, o, faces, dist, tiny, ga, gb, r1[imp], r2[imp],
                                  landmarks if detect else None)

        # Faces to embed: the tiny ones and every face of an impostor pair.
        want = tiny.copy()
        want[r1[imp]] = True
        want[r2[imp]] = True
        no_lmk = want & ~has_lmk
        if no_lmk.any() and detect:  # detector misses: part of the construction, counted
            skips.record(f"{int(no_lmk.sum())} face(s) of impostor pairs: no face detected "
                         "in the box", 0)
        elif no_lmk.any():
            k = int(np.argmax(no_lmk))
            msg = (f"no landmarks for TEMPLATE_ID {faces.tids[k]} ({REFERENCE_CSV} line "
                   f"{faces.lines[k]}); {int(no_lmk.sum())} face(s) in impostor pairs lack "
                   "them")
            skips.handle(ProtocolError(p["landmarks"], msg))
        want &= has_lmk
        missing = [k for k in np.flatnonzero(want) if not os.path.isfile(paths[k])]
        if missing:
            k = missing[0]
            more = f"; {len(missing)} listed images are missing in all" if len(missing) > 1 else ""
            skips.handle(ProtocolError(paths[k], f"image not found (listed in {REFERENCE_CSV} "
                                       f"line {faces.lines[k]}){more}"))
            want[missing] = False
        emb = ctx.embedder(o.flip)
        prepare = self._aligner(landmarks, paths, faces, o, ctx, emb.input_size)
        feats = embed_images(emb, paths, color=o.color or None, skips=skips, prepare=prepare,
                             wanted={"": want}, workers=ctx.workers, progress=ctx.progress,
                             desc=self.name)
        f, ok = feats[""], feats.ok & want
        f = np.where(ok[:, None], f, 0).astype(np.float32)

        g_ok = ok[ga] & ok[gb]
        i1, i2 = r1[imp], r2[imp]
        i_ok = ok[i1] & ok[i2]
        if not g_ok.any() or not i_ok.any():
            raise ProtocolError(p["images"], "no genuine or no impostor pair could be scored")
        st = StreamingTarAtFar(o.fars, max_impostors=int(i_ok.sum()))
        st.add_genuine(pair_cosines(f, ga[g_ok], f, gb[g_ok]))
        for _, s in iter_pair_scores(f, i1[i_ok], i2[i_ok], o.score_rows):
            st.add_impostor(s)
        self._finish(result, st, o)
        result["metrics"].update(
            level="face", paper={"genuine": PAPER_GENUINE, "impostor": PAPER_IMPOSTOR},
            landmarks="mtcnn (detected in the boxes)" if detect else p["landmarks"],
            rule=(f"tiny: eye-mouth distance in [{o.min_px}, {o.max_px}] px; genuine: distinct "
                  "tiny faces of one SUBJECT_ID; impostor: covariate matches of two SUBJECT_IDs; "
                  "face-to-face cosine"))
        result["counts"] = {
            "scored": st.n_genuine + st.n_impostor, "skipped": skips.count,
            "faces": n, "faces_with_landmarks": int(has_lmk.sum()), "faces_tiny": int(tiny.sum()),
            "faces_embedded": int(ok.sum()),
            "genuine_rule": n_gen_rule, "genuine": st.n_genuine, "genuine_paper": PAPER_GENUINE,
            "impostor_protocol": n_imp_protocol, "impostor": st.n_impostor,
            "impostor_paper": PAPER_IMPOSTOR, "matches": int(m1.size)}
        if lists:
            result["lists"] = lists
        result["skipped_examples"] = skips.examples
        return result

    def _aligner(self, landmarks, paths, faces, o, ctx, size):
        from ...align.templates import template_for
        from ...align.transform import estimate_similarity, warp_face

        kind = o.template if o.template != "auto" else (
            "dlib" if ctx.backbone_name.startswith("resnet29_dlib") else "arcface")
        dst = template_for(tuple(size), kind)

        def prepare(img: np.ndarray, i: int) -> np.ndarray:
            try:
                m = estimate_similarity(landmarks[i], dst)
            except ValueError as exc:
                raise DataError(paths[i], f"cannot align ({exc})",
                                f"landmarks of TEMPLATE_ID {faces.tids[i]}") from None
            return warp_face(img, m, tuple(size))

        return prepare

    def _write_lists(self, ctx, o, faces, dist, tiny, ga, gb, ia, ib,
                     landmarks: Optional[np.ndarray] = None) -> Optional[Dict[str, str]]:
        out = o.lists_dir or (os.path.join(ctx.out_dir, "lists") if ctx.out_dir else "")
        if not out:
            return None
        from ...io_utils import atomic_write_text

        os.makedirs(out, exist_ok=True)
        rows = ["TEMPLATE_ID SUBJECT_ID FILENAME EYE_MOUTH_PX"] + [
            f"{faces.tids[k]} {faces.subjects[k]} {faces.filenames[k]} {dist[k]:.2f}"
            for k in np.flatnonzero(tiny)]
        paths = {"tiny_faces": os.path.join(out, "tiny_faces.txt"),
                 "genuine_pairs": os.path.join(out, "genuine_pairs.txt"),
                 "impostor_pairs": os.path.join(out, "impostor_pairs.txt")}
        atomic_write_text(paths["tiny_faces"], "\n".join(rows) + "\n")
        _write_pairs(paths["genuine_pairs"], faces.tids, ga, gb)
        _write_pairs(paths["impostor_pairs"], faces.tids, ia, ib)
        if landmarks is not None:  # detected points, reusable as `landmarks`
            paths["landmarks"] = os.path.join(out, "covariate_5pts.txt")
            ok = np.isfinite(landmarks).all(axis=(1, 2))
            atomic_write_text(paths["landmarks"], "".join(
                f"{faces.tids[k]} " + " ".join(f"{v:.2f}" for v in landmarks[k].ravel()) + "\n"
                for k in np.flatnonzero(ok)))
        return paths

    def markdown(self, result: Dict[str, Any]) -> str:
        m, c = result["metrics"], result["counts"]
        head = ["Method"] + m["fars"]
        row = [method_label(result)] + [fmt_rate(m["tar"][f]["tar"]) for f in m["fars"]]
        return md_table(head, [row]) + (
            f"\nTAR at FAR, face-level 1:1 verification. Comparisons: {c['genuine']:,} genuine "
            f"(rule gives {c['genuine_rule']:,}; paper 158,338) and {c['impostor']:,} impostor "
            f"(covariate protocol negatives {c['impostor_protocol']:,}; paper 39,584,639); "
            f"{c['faces_tiny']:,} tiny faces of {c['faces']:,}. n/m: FAR below 1/impostors, "
            "not measurable.\n")
