"""Pair verification on already aligned images (insightface ``.bin`` sets and the
periodic validation during training): flip-sum embeddings, cosine scores, 10-fold
accuracy (paper §4.3, Fig. 6b)."""
from __future__ import annotations

from typing import Callable, Dict

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
            # the training run owns the backbone's memory format: no conversion here
            emb = Embedder(bb, self.device, flip=True, precision=self.precision, batch_size=self.batch_size,
                           channels_last=False)
            res = verify_aligned_pairs(emb, self.images, self.issame)
        finally:
            bb.train(was_training)
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

    def __call__(self, step: int) -> Dict[str, float]:
        from .protocols import EvalContext, get_protocol

        bb = self.get_backbone()
        was_training = bb.training
        bb.eval()
        try:
            ctx = EvalContext(model=bb, device=self.device, precision=self.precision,
                              batch_size=self.batch_size)
            res = get_protocol("pairs").run(ctx, self.root, self.options)
        finally:
            bb.train(was_training)
        m = res["metrics"]
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
