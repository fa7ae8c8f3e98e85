"""Pair verification on already aligned images (insightface ``.bin`` sets and the
periodic validation during training): flip-sum embeddings, cosine scores, 10-fold
accuracy (paper §4.3, Fig. 6b)."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch

from ..inference import Embedder


def pair_scores(feats: np.ndarray) -> np.ndarray:
    """Cosine of pairs (2i, 2i+1) of L2-normalised features."""
    return np.sum(feats[0::2] * feats[1::2], axis=1)


def verify_aligned_pairs(embedder: Embedder, images: np.ndarray, issame: np.ndarray,
                         color: str = "rgb", n_folds: int = 10) -> Dict[str, float]:
    from .metrics import kfold_verification_accuracy

    feats = embedder.embed_arrays(images, color)
    scores = pair_scores(feats)
    res = kfold_verification_accuracy(scores, np.asarray(issame, dtype=bool), n_folds=n_folds)
    return {"acc": float(res["mean"]), "acc_std": float(res["std"]), "pairs": int(len(scores))}


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

    def __call__(self, step: int) -> Dict[str, float]:
        bb = self.get_backbone()
        was_training = bb.training
        try:
            emb = Embedder(bb, self.device, flip=True, precision=self.precision, batch_size=self.batch_size)
            res = verify_aligned_pairs(emb, self.images, self.issame)
        finally:
            bb.train(was_training)
        return {"val/acc": res["acc"], "val/acc_std": res["acc_std"]}
