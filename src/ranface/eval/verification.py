"""Pair verification on already aligned images (insightface ``.bin`` sets and the
periodic validation during training): flip-sum embeddings, cosine scores, 10-fold
accuracy (paper §4.3, Fig. 6b)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence

import numpy as np
import torch

from ..inference import Embedder

if TYPE_CHECKING:
    from ..models.card import Thresholds


def pair_scores(feats: np.ndarray) -> np.ndarray:
    """Cosine of pairs (2i, 2i+1) of L2-normalised features."""
    return np.sum(feats[0::2] * feats[1::2], axis=1)


def verify_aligned_pairs(embedder: Embedder, images: np.ndarray, issame: np.ndarray,
                         color: str = "rgb", n_folds: int = 10) -> Dict[str, float]:
    from .metrics import kfold_verification_accuracy

    feats = embedder.embed_arrays(images, color)
    scores = pair_scores(feats)
    res = kfold_verification_accuracy(scores, np.asarray(issame, dtype=bool), n_folds=n_folds)
    return {"acc": float(res["mean"]), "acc_std": float(res["std"]), "pairs": int(len(scores)),
            "scores": scores}


class BinValidator:
    """Loads a ``.bin`` once; each call embeds it with the current backbone (eval mode,
    restored afterwards) and returns ``{"val/acc": ..., "val/acc_std": ...}``."""

    def __init__(self, path: str, get_backbone: Callable[[], torch.nn.Module], device: torch.device,
                 precision: str = "fp32", batch_size: int = 64):
        from ..data.binfile import load_bin

        self.path = path
        self.images, self.issame = load_bin(path)
        self.get_backbone = get_backbone
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.thresholds: Optional["Thresholds"] = None  # of the last call, for the model card

    def __call__(self, step: int) -> Dict[str, float]:
        bb = self.get_backbone()
        was_training = bb.training
        try:
            # the training run owns the backbone's memory format: no conversion here
            emb = Embedder(bb, self.device, flip=True, precision=self.precision, batch_size=self.batch_size,
                           channels_last=False, fuse=False)
            res = verify_aligned_pairs(emb, self.images, self.issame)
        finally:
            bb.train(was_training)
        self.thresholds = card_thresholds(res["scores"], self.issame,
                                          data=f"{self.path} (validation pairs at step {step})")
        return {"val/acc": res["acc"], "val/acc_std": res["acc_std"]}


class PairsValidator:
    """Periodic validation on an aligned folder with a ``pairs.txt`` (the ``pairs``
    protocol): ``val/acc`` at full resolution and, with ``probe_size``, ``val/acc_lr``
    with the second image of each pair shrunk to that width (HR-vs-LR)."""

    def __init__(self, root: str, get_backbone: Callable[[], torch.nn.Module], device: torch.device,
                 precision: str = "fp32", probe_size: int = 0, batch_size: int = 64):
        from .protocols import get_protocol
        from .protocols.pairs import PairsOptions

        self.root = root
        self.options = PairsOptions(probe_sizes=[probe_size] if probe_size else [], modes=["hr-lr"])
        get_protocol("pairs").validate_root(root, self.options)
        self.get_backbone = get_backbone
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.probe_size = probe_size
        self.thresholds: Optional["Thresholds"] = None  # of the last call, for the model card

    def __call__(self, step: int) -> Dict[str, float]:
        from .protocols import EvalContext, get_protocol

        bb = self.get_backbone()
        was_training = bb.training
        bb.eval()
        try:
            # the backbone as it trains (no fused copy): validation as before issue 16
            ctx = EvalContext(model=bb, device=self.device, precision=self.precision,
                              batch_size=self.batch_size, fuse=False)
            res = get_protocol("pairs").run(ctx, self.root, self.options)
        finally:
            bb.train(was_training)
        m = res["metrics"]
        from ..models.card import Thresholds

        full = m["full"]
        at = (full.get("tar") or {}).get("1e-3") or {}
        self.thresholds = Thresholds(best_accuracy=full.get("best_threshold"), at_far=at.get("threshold"),
                                     accuracy=full.get("best_threshold_acc"), tar=at.get("tar"),
                                     pairs=int(full.get("pairs", 0)),
                                     data=f"{self.root} pairs.txt (validation at step {step})")
        out = {"val/acc": float(m["full"]["acc"]), "val/acc_std": float(m["full"]["acc_std"])}
        if self.probe_size:
            out["val/acc_lr"] = float(m["hr-lr"][str(self.probe_size)]["acc"])
        return out


def make_validator(path: str, get_backbone: Callable[[], torch.nn.Module], device: torch.device,
                   precision: str = "fp32", probe_size: int = 0):
    """A ``.bin`` file -> :class:`BinValidator`; a folder with ``pairs.txt`` ->
    :class:`PairsValidator`."""
    import os

    from ..errors import DataError

    if os.path.isdir(path):
        return PairsValidator(path, get_backbone, device, precision, probe_size)
    if path.endswith(".bin"):
        return BinValidator(path, get_backbone, device, precision)
    raise DataError(path, "validation set must be an insightface .bin file or an aligned folder "
                    "with a pairs.txt")


def card_thresholds(scores: Sequence[float], issame: Sequence[bool], data: str, far: float = 1e-3,
                    note: str = "") -> "Thresholds":
    """The model card's calibrated thresholds from pair cosines: the best-accuracy
    threshold (:func:`ranface.eval.metrics.best_accuracy_threshold`, all pairs at once)
    and the exact threshold at ``far`` (:func:`ranface.eval.metrics.tar_at_far`), with
    the accuracy / TAR reached there and the ``data`` they came from."""
    from ..models.card import Thresholds
    from .metrics import best_accuracy_threshold, tar_at_far

    s = np.asarray(scores, dtype=np.float64)
    same = np.asarray(issame, dtype=bool)
    t_acc, acc = best_accuracy_threshold(s, same)
    op = tar_at_far(s[same], s[~same], (far,))[far]
    return Thresholds(best_accuracy=float(t_acc), at_far=op.threshold, far=float(far), accuracy=float(acc),
                      tar=op.tar, pairs=int(s.size), data=data, note=note)
