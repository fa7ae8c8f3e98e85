"""``pairs``: LFW ``pairs.txt`` verification on any folder of aligned faces, at any probe
resolution (the protocol the bundled grey LFW uses; paper §4.3 / Fig. 6b for the
full-resolution row, the low-resolution rows stand in for the surveillance setting).

File format (LFW View 2): a header ``F N`` (F folds of N pairs per class; a single
``N`` means one fold, as in ``pairsDevTrain.txt``), then for each fold N matched lines
``name i j`` followed by N mismatched lines ``name1 i name2 j``. Image ``i`` of ``name``
is ``<images>/<name>/<name>_<iiii>.<ext>`` (4-digit index). Fold numbers are 0-based.

Metrics per (mode, probe size): 10-fold accuracy using the file's own folds (threshold
chosen on the other folds, :func:`~ranface.eval.metrics.kfold_verification_accuracy`;
mean and population std), TAR at FAR (``fars``), ROC and AUC, on cosine scores of
flip-sum embeddings (``flip``).

Probe-resolution sweep: a probe of ``s`` px is the aligned image shrunk to ``s`` px wide
and resized back to its aligned size (:func:`ranface.degrade.down_up`, bicubic,
antialiased), then to the model's input. With ``probe_degrader`` the probe is made by that
registered degrader instead (e.g. ``second-order``: blur, resize to ``s`` px, noise and
JPEG, twice), its random draws seeded by the image's pixels, the width and ``probe_seed``:
the same probe for every model, whatever the order or threads of the run. A probe kind no
compared model was trained on tests what bicubic probes cannot: whether a model's LR
training transfers to degradations it did not see. Mode ``hr-lr`` degrades the SECOND image of
every pair line (``j`` / ``name2 j``) and keeps the first at full resolution; mode
``lr-lr`` degrades both. The ``full`` row is HR-HR. Each distinct image is read once and
embedded once per size it is needed at.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import numpy as np

from ...config import path_field
from ...errors import ConfigError, ProtocolError
from ...io_utils import atomic_write_text
from ..features import SkipLog, embed_images
from ..report import NOT_MEASURABLE, curve, far_label, fmt_pct, fmt_rate, md_table, plot_curves, plot_panels
from . import EvalContext, Protocol, base_result, register_protocol
from .common import check_listed, operating_points, require

__all__ = ["Pair", "PairsOptions", "parse_pairs", "lfw_split", "PairsProtocol", "MODES"]

MODES = ("hr-lr", "lr-lr")
FULL = "full"


@dataclass(frozen=True)
class Pair:
    """One line of ``pairs.txt``: fold (0-based), image paths relative to the image
    folder, whether it is a matched pair, and its line number (1-based)."""

    fold: int
    path1: str
    path2: str
    same: bool
    line: int


@dataclass
class PairsOptions:
    # default relative to the root; a value the user gives is a path from the current directory
    pairs: str = path_field("pairs.txt")
    images: str = path_field("auto", keywords=("auto",))  # auto: <root>/images if it exists, else <root>
    ext: str = "jpg"  # jpg | png (the file extension the images have)
    flip: bool = True  # flip-sum embeddings
    probe_sizes: List[int] = field(default_factory=lambda: [32, 24, 16, 12, 8])
    modes: List[str] = field(default_factory=lambda: list(MODES))
    fars: List[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1])
    kernel: str = "bicubic"  # down_up kernel (both directions)
    # "": probes are down_up(kernel); else a degrader of ranface.gan.degraders (second-order,
    # random-degrade, ...) with its width option pinned to each probe size
    probe_degrader: str = ""
    probe_options: Any = field(default_factory=dict)  # the degrader validates them
    probe_seed: int = 0
    color: str = ""  # channel order fed to the model; "" : the model's own
    per_fold: int = 0  # >0: keep only the first N matched and N mismatched pairs per fold


def _identity(rel: str) -> str:
    return rel.split("/", 1)[0]


def _index(tok: str, path: str, line: int) -> int:
    if not tok.isdigit() or int(tok) < 1:
        raise ProtocolError(path, f"image number {tok!r} is not a positive integer",
                            f"line {line}")
    return int(tok)


def parse_pairs(path: str, ext: str = "jpg") -> List[Pair]:
    """Read an LFW-format ``pairs.txt``; every malformed line is a :class:`ProtocolError`
    naming its line number."""
    ext = ext.lstrip(".")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            lines = [(no, ln.split()) for no, ln in enumerate(fh, 1)]
    except OSError as exc:
        raise ProtocolError(path, f"cannot read pairs file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ProtocolError(path, "not a UTF-8 text file") from None
    lines = [(no, tok) for no, tok in lines if tok]
    if not lines:
        raise ProtocolError(path, "empty pairs file")
    hno, head = lines[0]
    if not 1 <= len(head) <= 2 or not all(t.isdigit() and int(t) > 0 for t in head):
        raise ProtocolError(path, f"header must be 'FOLDS PAIRS_PER_CLASS' (e.g. '10 300'), "
                            f"got {' '.join(head)!r}", f"line {hno}")
    n_folds, per_class = (1, int(head[0])) if len(head) == 1 else (int(head[0]), int(head[1]))
    body = lines[1:]
    expected = n_folds * 2 * per_class
    out: List[Pair] = []
    for k, (no, tok) in enumerate(body):
        if k >= expected:
            raise ProtocolError(path, f"more pairs than the header's {n_folds} folds x 2 x "
                                f"{per_class}", f"line {no}")
        fold, r = divmod(k, 2 * per_class)
        same = r < per_class
        if same:
            if len(tok) != 3:
                raise ProtocolError(path, f"expected a matched pair 'name i j' (pair {r + 1} "
                                    f"of fold {fold}), got {len(tok)} fields", f"line {no}")
            n1, i, n2, j = tok[0], tok[1], tok[0], tok[2]
        else:
            if len(tok) != 4:
                raise ProtocolError(path, f"expected a mismatched pair 'name1 i name2 j' (pair "
                                    f"{r + 1} of fold {fold}), got {len(tok)} fields",
                                    f"line {no}")
            n1, i, n2, j = tok
        a, b = _index(i, path, no), _index(j, path, no)
        out.append(Pair(fold, f"{n1}/{n1}_{a:04d}.{ext}", f"{n2}/{n2}_{b:04d}.{ext}", same, no))
    if len(out) < expected:
        last = body[-1][0] if body else hno
        raise ProtocolError(path, f"ends after {len(out)} pairs; the header promises "
                            f"{n_folds} folds x 2 x {per_class} = {expected}", f"line {last}")
    return out


def lfw_split(pairs: Sequence[Pair], test_folds: Iterable[int], out_path: Optional[str] = None,
              all_identities: Optional[Iterable[str]] = None) -> Tuple[List[str], List[str]]:
    """Identity-disjoint split for training on LFW people and testing on some folds.

    Test identities: everyone in a pair of a ``test_folds`` fold (0-based). Training
    identities: everyone else among ``all_identities`` (default: the people of the pair
    file), i.e. all people that appear in none of the test folds. With ``out_path`` the
    split is written there as JSON (atomically). Returns (train, test), sorted.
    """
    folds = sorted({int(f) for f in test_folds})
    present = {p.fold for p in pairs}
    bad = [f for f in folds if f not in present]
    if not folds or bad:
        raise ConfigError(f"test_folds must name folds of the pair file "
                          f"({sorted(present)}), got {folds}")
    test: Set[str] = set()
    everyone: Set[str] = set()
    for p in pairs:
        ids = {_identity(p.path1), _identity(p.path2)}
        everyone |= ids
        if p.fold in folds:
            test |= ids
    if all_identities is not None:
        everyone = set(all_identities) | test
    train = sorted(everyone - test)
    test_l = sorted(test)
    if out_path:
        atomic_write_text(out_path, json.dumps({
            "test_folds": folds, "n_train_identities": len(train),
            "n_test_identities": len(test_l), "train_identities": train,
            "test_identities": test_l}, indent=1) + "\n")
    return train, test_l


def _metrics(s: np.ndarray, same: np.ndarray, folds: np.ndarray, fars: Sequence[float]
             ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    from ..metrics import (best_accuracy_threshold, equal_error_rate, kfold_verification_accuracy, roc_auc,
                           roc_curve_points, tar_at_far)

    k = kfold_verification_accuracy(s, same, folds=folds)
    gen, imp = s[same], s[~same]
    fpr, tpr, _ = roc_curve_points(gen, imp, max_points=200)
    m = {"acc": k["mean"], "acc_std": k["std"],
         "fold_acc": [float(v) for v in k["fold_accuracies"]],
         "correct": "".join("1" if c else "0" for c in k["correct"]),  # per scored pair: paired tests
         "tar": operating_points(tar_at_far(gen, imp, fars)),
         "auc": roc_auc(gen, imp), "pairs": int(s.size)}
    m["eer"], m["eer_threshold"] = equal_error_rate(gen, imp)
    # the threshold a deployment would use (all pairs at once), e.g. for a model card
    m["best_threshold"], m["best_threshold_acc"] = best_accuracy_threshold(s, same)
    return m, {"fpr": fpr, "tpr": tpr}


@register_protocol("pairs")
class PairsProtocol(Protocol):
    Options = PairsOptions
    title = "Pair verification (LFW pairs.txt) at probe resolutions"
    provenance = ("LFW View 2 pairs.txt folds with insightface's verification scoring (flip-sum "
                  "cosine, best threshold on the other folds); the probe-size sweep is ranface's")

    @staticmethod
    def _paths(root: str, o: PairsOptions) -> Tuple[str, str]:
        pairs = o.pairs if os.path.isabs(o.pairs) else os.path.join(root, o.pairs)
        if o.images == "auto":
            images = os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) \
                else root
        else:
            images = o.images if os.path.isabs(o.images) else os.path.join(root, o.images)
        # absolute: callers (require, messages) must not join them onto the root again
        return os.path.abspath(pairs), os.path.abspath(images)

    def validate_root(self, root: str, options: Any = None) -> None:
        o = options or PairsOptions()
        bad = [m for m in o.modes if m not in MODES]
        if bad or not o.modes:
            raise ConfigError(f"modes must be a non-empty list of {MODES}, got {o.modes}")
        if any(int(s) < 1 for s in o.probe_sizes):
            raise ConfigError(f"probe_sizes must be positive pixel widths, got {o.probe_sizes}")
        if o.ext.lstrip(".").lower() not in ("jpg", "jpeg", "png", "bmp", "webp"):
            raise ConfigError(f"ext must be an image extension (jpg, png, ...), got {o.ext!r}")
        if not isinstance(o.probe_options, dict):
            raise ConfigError(f"probe_options must be a mapping of the degrader's options, got {o.probe_options!r}")
        if o.probe_degrader:
            for s in o.probe_sizes:  # unknown name, bad option or width: a ConfigError now
                _degrader_probe(o.probe_degrader, o.probe_options, int(s), o.probe_seed)
        pairs, images = self._paths(root, o)
        require(root, [(pairs, "file"), (images, "dir")], "pairs-protocol")

    def run(self, ctx: EvalContext, root: str, options: PairsOptions) -> Dict[str, Any]:
        o = options
        pairs_file, images = self._paths(root, o)
        pairs = parse_pairs(pairs_file, o.ext)
        if o.per_fold > 0:
            pairs = _first_per_fold(pairs, o.per_fold)
        skips = SkipLog(ctx.on_error)
        result = base_result(self.name, ctx, root, o)

        # Every distinct image once; a missing one names its path and pairs.txt line.
        uniq: Dict[str, int] = {}
        first_line: Dict[str, int] = {}
        for p in pairs:
            for rel in (p.path1, p.path2):
                if rel not in uniq:
                    uniq[rel] = len(uniq)
                    first_line[rel] = p.line
        rels = list(uniq)
        check_listed(rels, pairs_file, images, ctx.allow_outside_root,
                     [f"line {first_line[r]}" for r in rels])
        missing = [r for r in rels if not os.path.isfile(os.path.join(images, r))]
        # Photos in which `prepare` found no face are a known, counted loss (their pairs are
        # dropped and named in the result); any other missing image is an error.
        from ...align.prepare import prepared_failures

        failed = prepared_failures(images) if missing else {}
        undetected = {r: failed[r] for r in missing if r in failed}
        missing = [r for r in missing if r not in undetected]
        if missing and ctx.on_error != "skip":
            r = missing[0]
            more = f"; {len(missing)} of its images are missing in all" if len(missing) > 1 else ""
            raise ProtocolError(os.path.join(images, r), f"image not found (named in "
                                f"{pairs_file} line {first_line[r]}){more}")
        for r in missing:
            skips.record(f"{os.path.join(images, r)}: image not found (named in {pairs_file} "
                         f"line {first_line[r]})")
        i1 = np.array([uniq[p.path1] for p in pairs])
        i2 = np.array([uniq[p.path2] for p in pairs])
        same = np.array([p.same for p in pairs])
        folds = np.array([p.fold for p in pairs])

        sizes = sorted({int(s) for s in o.probe_sizes}, reverse=True)
        need_lr = np.zeros(len(rels), bool)
        if "lr-lr" in o.modes:
            need_lr[i1] = True
        need_lr[i2] = True
        gone = np.zeros(len(rels), bool)
        gone[[uniq[r] for r in missing]] = True
        undet = np.zeros(len(rels), bool)
        undet[[uniq[r] for r in undetected]] = True
        gone |= undet
        lost = undet[i1] | undet[i2]
        dropped = {"reason": "no face detected by prepare (failures.csv of the image folder)",
                   "pairs": int(lost.sum()), "matched": int((lost & same).sum()),
                   "mismatched": int((lost & ~same).sum()),
                   "per_fold": {str(int(f)): int((lost & (folds == f)).sum()) for f in np.unique(folds)},
                   "images": [{"image": r, "reason": why} for r, why in sorted(undetected.items())]}
        variants: Dict[str, Any] = {FULL: None}
        wanted: Dict[str, np.ndarray] = {FULL: ~gone}
        for s in sizes:
            variants[str(s)] = (_degrader_probe(o.probe_degrader, o.probe_options, s, o.probe_seed)
                                if o.probe_degrader else _down_up(s, o.kernel))
            wanted[str(s)] = need_lr & ~gone
        emb = ctx.embedder(o.flip)
        feats = embed_images(emb, [os.path.join(images, r) for r in rels],
                             color=o.color or None, skips=skips, variants=variants,
                             wanted=wanted, workers=ctx.workers, progress=ctx.progress,
                             desc="pairs")
        ok = feats.ok & ~gone
        valid = ok[i1] & ok[i2]
        n_bad = int((~valid).sum()) - dropped["pairs"]
        if not valid.any():
            raise ProtocolError(pairs_file, "no pair could be scored (all images unreadable)")
        if (~same[valid]).sum() == 0 or same[valid].sum() == 0:
            raise ProtocolError(pairs_file, "need matched and mismatched pairs to score")
        lines = np.array([p.line for p in pairs])[valid]
        i1, i2, same, folds = i1[valid], i2[valid], same[valid], folds[valid]
        if np.unique(folds).size < 2:
            # One fold in the file (pairsDevTrain style): 10 folds by position in each class.
            folds = np.zeros(same.size, np.int64)
            for cls in (True, False):
                idx = np.flatnonzero(same == cls)
                folds[idx] = np.arange(idx.size) % 10
        if np.unique(folds).size < 2:  # else the k-fold accuracy's ValueError, a traceback
            raise ProtocolError(pairs_file, f"{same.size} scorable pair(s) make one fold; the "
                                "k-fold accuracy needs at least 2 matched and 2 mismatched pairs")

        n_folds = int(np.unique(folds).size)
        metrics: Dict[str, Any] = {}
        curves: Dict[str, Any] = {}
        full = feats[FULL]
        m, roc = _metrics(np.einsum("ij,ij->i", full[i1], full[i2]), same, folds, o.fars)
        metrics[FULL] = m
        curves[f"roc/{FULL}"] = curve(roc["fpr"], roc["tpr"], "FAR", "TAR", log_x=True,
                                      compare=True)
        for mode in o.modes:
            metrics[mode] = {}
            for s in sizes:
                lr = feats[str(s)]
                a = lr[i1] if mode == "lr-lr" else full[i1]
                m, roc = _metrics(np.einsum("ij,ij->i", a, lr[i2]), same, folds, o.fars)
                metrics[mode][str(s)] = m
                curves[f"roc/{mode}/{s}"] = curve(roc["fpr"], roc["tpr"], "FAR", "TAR",
                                                  log_x=True)
            accs = [metrics[mode][str(s)]["acc"] for s in sizes]
            stds = [metrics[mode][str(s)]["acc_std"] for s in sizes]
            curves[f"acc-vs-pixels/{mode}"] = curve(
                sizes, accs, "probe width (px)", f"{n_folds}-fold accuracy", y_err=stds, markers=True,
                hline=metrics[FULL]["acc"], compare=True)
        result["metrics"] = {"sizes": sizes, "modes": list(o.modes),
                             "fars": [far_label(f) for f in o.fars],
                             "degraded_image": "second of each pair (hr-lr); both (lr-lr)",
                             "probe": ({"degrader": o.probe_degrader, "options": dict(o.probe_options),
                                        "seed": o.probe_seed} if o.probe_degrader
                                       else {"degrader": "down-up", "kernel": o.kernel}),
                             "folds": n_folds, "fold_ids": sorted(int(f) for f in np.unique(folds)),
                             **metrics}
        # which pair each character of a "correct" string is (pairs.txt line numbers)
        result["scored_pairs"] = {"lines": [int(v) for v in lines], "folds": [int(v) for v in folds],
                                  "same": "".join("1" if v else "0" for v in same)}
        result["dropped"] = dropped
        result["curves"] = curves
        result["counts"] = {"scored": int(valid.sum()), "skipped": n_bad,
                            "dropped_undetected": dropped["pairs"], "folds": n_folds,
                            "pairs": len(pairs), "images": len(rels),
                            "images_embedded": int(ok.sum()),
                            "embedded_variants": feats.n_embedded,
                            "images_skipped": int(len(rels) - ok.sum()),
                            "matched": int(same.sum()), "mismatched": int((~same).sum())}
        result["skipped_examples"] = skips.examples
        return result

    # ------------------------------------------------------------------ report
    def markdown(self, result: Dict[str, Any]) -> str:
        m = result["metrics"]
        modes, fars = m["modes"], m["fars"]
        head = ["probe px"] + [f"{md} acc (%)" for md in modes] + \
            [f"{md} TAR@FAR={f}" for md in modes for f in fars]

        def row(label: str, pick) -> List[str]:
            cells = [label]
            cells += [fmt_pct(pick(md)["acc"], pick(md)["acc_std"]) for md in modes]
            cells += [fmt_rate(pick(md)["tar"][f]["tar"]) for md in modes for f in fars]
            return cells

        rows = [row("full", lambda md: m[FULL])]
        rows += [row(str(s), lambda md, s=s: m[md][str(s)]) for s in m["sizes"]]
        k = m.get("folds", 10)
        probe = m.get("probe") or {}
        how = ("shrunk to the probe width and resized back" if probe.get("degrader", "down-up") == "down-up"
               else f"degraded by `{probe['degrader']}` at the probe width")
        note = (f"\nhr-lr: the second image of each pair is {how}; lr-lr: both images. "
                "full: both at full resolution. "
                f"Accuracy: {k}-fold mean ± std (%), threshold chosen on the other fold"
                f"{'s' if k > 2 else ''}.\n")
        note += dropped_note(result)
        ops = [["full", "-", *_op_cells(m[FULL])]]
        ops += [[str(s), md, *_op_cells(m[md][str(s)])] for md in modes for s in m["sizes"]]
        note += ("\nOperating points (all pairs at once): equal error rate, the cosine threshold "
                 "of the best accuracy (accept > threshold) and the ROC's AUC.\n\n")
        note += md_table(["probe px", "mode", "EER (%)", "threshold at best acc", "best acc (%)", "AUC"], ops)
        return md_table(head, rows) + note

    def plots(self, result: Dict[str, Any], out_dir: str) -> List[str]:
        c = result["curves"]
        modes = result["metrics"]["modes"]
        acc = {md: c[f"acc-vs-pixels/{md}"] for md in modes}
        k = result["metrics"].get("folds", 10)
        out = [plot_curves(acc, os.path.join(out_dir, "accuracy_vs_pixels.png"),
                           f"{k}-fold accuracy vs probe width (dashed: full resolution)")]
        panels = {}
        for md in modes:
            series = {"full": c[f"roc/{FULL}"]}
            series.update({f"{s} px": c[f"roc/{md}/{s}"] for s in result["metrics"]["sizes"]})
            panels[f"ROC {md}"] = series
        out.append(plot_panels(panels, os.path.join(out_dir, "roc.png")))
        return out

    def summary(self, result: Dict[str, Any]) -> Dict[str, str]:
        m = result["metrics"]
        row = {"full acc": fmt_pct(m[FULL]["acc"], m[FULL]["acc_std"])}
        for md in m["modes"]:
            for s in m["sizes"]:
                r = m[md][str(s)]
                row[f"{md} {s}px acc"] = fmt_pct(r["acc"], r["acc_std"])
        return row


def _op_cells(r: Dict[str, Any]) -> List[str]:
    """EER, best-accuracy threshold, its accuracy and AUC (n/m for results written before
    they were recorded)."""
    thr = r.get("best_threshold")
    return [fmt_pct(r.get("eer")), NOT_MEASURABLE if thr is None else f"{thr:.4f}",
            fmt_pct(r.get("best_threshold_acc")), fmt_rate(r.get("auc"))]


def dropped_note(result: Dict[str, Any], max_named: int = 8) -> str:
    """One Markdown paragraph on the pairs dropped because prepare found no face."""
    d = result.get("dropped") or {}
    if not d.get("pairs"):
        return ""
    per = ", ".join(f"fold {f}: {n}" for f, n in sorted(d["per_fold"].items(), key=lambda t: int(t[0])))
    names = [x["image"] for x in d["images"]]
    shown = ", ".join(names[:max_named]) + (f" and {len(names) - max_named} more" if len(names) > max_named else "")
    return (f"\nDropped {d['pairs']} pairs ({d['matched']} matched, {d['mismatched']} mismatched; {per}): "
            f"prepare detected no face in {len(names)} of their photos ({shown}).\n")


def _first_per_fold(pairs: List[Pair], n: int) -> List[Pair]:
    count: Dict[Tuple[int, bool], int] = {}
    out = []
    for p in pairs:
        k = (p.fold, p.same)
        if count.get(k, 0) < n:
            count[k] = count.get(k, 0) + 1
            out.append(p)
    return out


def _down_up(size: int, kernel: str):
    from ...degrade import down_up

    def op(img: np.ndarray) -> np.ndarray:
        return down_up(img, size, down=kernel, up=kernel)

    return op


def _degrader_probe(name: str, options: Dict[str, Any], size: int, seed: int):
    """Probes of ``size`` px made by degrader ``name``; each image's random draws come from
    a generator seeded by its pixels, ``size`` and ``seed`` (deterministic under threads)."""
    import zlib

    import torch

    from ...gan.degraders import create_at_width, degrade_image

    deg = create_at_width(name, options, size)

    def op(img: np.ndarray) -> np.ndarray:
        key = zlib.crc32(np.ascontiguousarray(img).tobytes())
        s = np.random.SeedSequence([key, int(size), int(seed) & 0xFFFFFFFF, 0x9B0BE])
        g = torch.Generator().manual_seed(int(s.generate_state(1, dtype=np.uint64)[0] >> 1))
        return degrade_image(deg, img, g)

    return op
