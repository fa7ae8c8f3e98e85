"""``bin``: insightface verification ``.bin`` sets (LFW, CALFW, CPLFW, AgeDB-30, CFP-FP;
paper Fig. 6b, "stable performance on the common recognition scenarios").

Each ``.bin`` holds pairs of aligned 112x112 faces (image 2i with 2i+1). Flip-sum cosine
scores, 10 contiguous folds (insightface's unshuffled ``KFold``, so the numbers compare
with published ones), accuracy mean ± population std, plus ROC/AUC. Several sets in one
call: ``--root`` a folder of ``*.bin`` (all of them) or option ``files`` (names without
``.bin``, or paths).

Follows insightface's ``eval/verification.py``. Deliberate difference: the best-accuracy
threshold of each fold is searched exactly between observed scores
(:func:`~ranface.eval.metrics.best_accuracy_threshold`), not on its 0..4 distance grid.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple

import numpy as np

from ...data.binfile import read_bin
from ...data.image import decode_image
from ...errors import DataError, ProtocolError
from ..features import SkipLog, embed_arrays
from ..report import curve, fmt_pct, fmt_rate, md_table, plot_curves
from ..verification import pair_scores
from . import EvalContext, Protocol, base_result, register_protocol
from .common import listing

__all__ = ["BinOptions", "BinProtocol", "PAPER_ORDER"]

# Fig. 6b's column order; other names follow alphabetically.
PAPER_ORDER = ("lfw", "calfw", "cplfw", "agedb_30", "cfp_fp")
PAPER_NAMES = {"lfw": "LFW", "calfw": "CALFW", "cplfw": "CPLFW", "agedb_30": "AgeDB-30",
               "cfp_fp": "CFP-FP", "cfp_ff": "CFP-FF", "vgg2_fp": "VGG2-FP"}


@dataclass
class BinOptions:
    files: List[str] = field(default_factory=list)  # [] : every *.bin in the root
    flip: bool = True
    n_folds: int = 10
    color: str = "rgb"  # channel order of the decoded images (insightface: rgb)


def _resolve(root: str, o: BinOptions) -> List[Tuple[str, str]]:
    """(set name, path) of each requested .bin."""
    if not o.files:
        paths = sorted(glob.glob(os.path.join(root, "*.bin")))
        return [(os.path.splitext(os.path.basename(p))[0], p) for p in paths]
    out = []
    for f in o.files:
        p = f if os.path.isabs(f) else os.path.join(root, f)
        if not p.endswith(".bin"):
            p += ".bin"
        out.append((os.path.splitext(os.path.basename(p))[0], p))
    return out


def _order(names: List[str]) -> List[str]:
    known = [n for n in PAPER_ORDER if n in names]
    return known + sorted(n for n in names if n not in PAPER_ORDER)


@register_protocol("bin")
class BinProtocol(Protocol):
    Options = BinOptions
    title = "Verification on insightface .bin sets"
    provenance = ("insightface eval/verification.py (.bin pairs, flip-sum, 10 unshuffled folds); "
                  "differs: the best threshold is searched exactly, not on its 0..4 distance grid")

    def validate_root(self, root: str, options: Any = None) -> None:
        o = options or BinOptions()
        sets = _resolve(root, o)
        if not sets:
            raise ProtocolError(root, "no *.bin files in the folder (or name them with "
                                "--set files=[lfw,cfp_fp,...])")
        missing = [p for _, p in sets if not os.path.isfile(p)]
        if missing:
            raise ProtocolError(root, f"missing {len(missing)} .bin file(s): {listing(missing)}")

    def run(self, ctx: EvalContext, root: str, options: BinOptions) -> Dict[str, Any]:
        from ..metrics import (best_accuracy_threshold, equal_error_rate, kfold_verification_accuracy, roc_auc,
                               roc_curve_points, tar_at_far)

        o = options
        result = base_result(self.name, ctx, root, o)
        skips = SkipLog(ctx.on_error)
        emb = ctx.embedder(o.flip)
        metrics: Dict[str, Any] = {}
        curves: Dict[str, Any] = {}
        scored = skipped = 0
        for name, path in _resolve(root, o):
            encoded, issame = read_bin(path)
            arrays: List[np.ndarray] = []
            ok = np.zeros(len(encoded), bool)
            for k, data in enumerate(encoded):
                try:
                    arrays.append(decode_image(data, path, o.color))
                    ok[k] = True
                except DataError as exc:
                    skips.handle(DataError(path, exc.problem, f"image {k}"))
            f = embed_arrays(emb, arrays, o.color)
            feats = np.full((len(encoded), f.shape[1]), np.nan, np.float32)
            feats[ok] = f
            valid = ok[0::2] & ok[1::2]
            if not valid.any():
                raise ProtocolError(path, "no pair could be scored (all images unreadable)")
            s = pair_scores(feats)[valid]  # NaN rows (skipped images) only in dropped pairs
            same = np.asarray(issame, bool)[valid]
            if same.all() or not same.any():
                raise ProtocolError(path, "need matched and mismatched pairs to score")
            # Fewer pairs than folds (tiny test sets): one pair per fold.
            k = kfold_verification_accuracy(s, same, n_folds=min(o.n_folds, s.size))
            fpr, tpr, _ = roc_curve_points(s[same], s[~same], max_points=200)
            metrics[name] = {"acc": k["mean"], "acc_std": k["std"],
                             "fold_acc": [float(v) for v in k["fold_accuracies"]],
                             "auc": roc_auc(s[same], s[~same]), "pairs": int(valid.sum()),
                             "pairs_skipped": int((~valid).sum()), "file": path,
                             "folds": int(min(o.n_folds, s.size))}
            metrics[name]["eer"], _ = equal_error_rate(s[same], s[~same])
            metrics[name]["best_threshold"], metrics[name]["best_threshold_acc"] = best_accuracy_threshold(s, same)
            op = tar_at_far(s[same], s[~same], (1e-3,))[1e-3]
            metrics[name]["tar_1e-3"] = op.tar
            curves[f"roc/{name}"] = curve(fpr, tpr, "FAR", "TAR", log_x=True, compare=True)
            scored += int(valid.sum())
            skipped += int((~valid).sum())
        result["metrics"] = {"sets": _order(list(metrics)), **metrics}
        result["curves"] = curves
        result["counts"] = {"scored": scored, "skipped": skipped,
                            "images_skipped": skips.count}
        result["skipped_examples"] = skips.examples
        return result

    def markdown(self, result: Dict[str, Any]) -> str:
        m = result["metrics"]
        sets = m["sets"]
        head = ["Method"] + [PAPER_NAMES.get(s, s) for s in sets]
        from ..report import method_label

        row = [method_label(result)] + [fmt_pct(m[s]["acc"], m[s]["acc_std"]) for s in sets]
        folds = sorted({int(m[s].get("folds", 10)) for s in sets})
        ops = [[PAPER_NAMES.get(s, s), fmt_rate(m[s].get("tar_1e-3")), fmt_pct(m[s].get("eer")),
                "n/m" if m[s].get("best_threshold") is None else f"{m[s]['best_threshold']:.4f}",
                fmt_rate(m[s].get("auc"))] for s in sets]
        return (md_table(head, [row]) + f"\nAccuracy (%), {'/'.join(map(str, folds))}-fold mean ± std.\n\n"
                + md_table(["set", "TAR@FAR=1e-3", "EER (%)", "threshold at best acc", "AUC"], ops))

    def plots(self, result: Dict[str, Any], out_dir: str) -> List[str]:
        series = {PAPER_NAMES.get(s, s): result["curves"][f"roc/{s}"]
                  for s in result["metrics"]["sets"]}
        return [plot_curves(series, os.path.join(out_dir, "roc.png"), "ROC")]

    def summary(self, result: Dict[str, Any]) -> Dict[str, str]:
        m = result["metrics"]
        return {PAPER_NAMES.get(s, s): fmt_pct(m[s]["acc"], m[s]["acc_std"]) for s in m["sets"]}
