"""``ranface embed`` and ``ranface compare`` on aligned faces."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .config import EmbedConfig
from .data.image import read_image
from .errors import DataError
from .inference import Embedder, load_model
from .io_utils import check_writable_dir, publish_together
from .train.precision import resolve_device

def list_images(root: str, not_regular: Optional[List[str]] = None) -> List[str]:
    """Image files under ``root`` (recursive, sorted, relative paths); none is an error.
    Non-regular files with an image name (FIFOs, devices) are skipped into ``not_regular``."""
    from .eval.features import IMAGE_EXTS, list_image_files

    if not os.path.isdir(root):
        raise DataError(root, "input folder not found")
    out = list_image_files(root, recursive=True, not_regular=not_regular)
    if not out:
        raise DataError(root, f"no images ({', '.join(IMAGE_EXTS)}) found")
    return out


def _embedder(cfg: EmbedConfig) -> Tuple[Embedder, Dict[str, Any]]:
    device = resolve_device(cfg.device)
    model, info = load_model(cfg.model, cfg.backbone, device)
    return Embedder(model, device, flip=cfg.flip, batch_size=cfg.batch_size), info


def embed_folder(cfg: EmbedConfig, root: str, out_prefix: str, on_error: str = "raise") -> Dict[str, Any]:
    """Writes ``out_prefix.npy`` (N x D float32, L2-normalised) and ``out_prefix.tsv``
    (row, relative path) atomically; returns counts."""
    # fail before loading the model and embedding everything, not at the final write
    check_writable_dir(os.path.dirname(os.path.abspath(out_prefix)))
    emb, info = _embedder(cfg)
    not_regular: List[str] = []
    files = list_images(root, not_regular)
    color = cfg.color or emb.color
    kept: List[str] = []
    skipped: List[str] = []
    feats: List[np.ndarray] = []
    batch: List[np.ndarray] = []
    names: List[str] = []

    def flush() -> None:
        if batch:
            feats.append(emb.embed_arrays(batch, color))
            kept.extend(names)
            batch.clear()
            names.clear()

    for rel in files:
        try:
            arr = read_image(os.path.join(root, rel), color=color)
        except DataError as exc:
            if on_error == "raise":
                raise
            skipped.append(str(exc))
            continue
        batch.append(arr)
        names.append(rel)
        if len(batch) >= cfg.batch_size:
            flush()
    flush()
    if not kept:
        raise DataError(root, "no image could be read")
    matrix = np.concatenate(feats).astype(np.float32)
    index = "".join(f"{i}\t{p}\n" for i, p in enumerate(kept)).encode("utf-8")
    # the matrix and its index are one unit: both new or both old
    publish_together({out_prefix + ".npy": lambda fh: np.save(fh, matrix),
                      out_prefix + ".tsv": lambda fh: fh.write(index)})
    return {"embedded": len(kept), "skipped": len(skipped), "not_regular_files": len(not_regular), "skipped_examples": skipped[:5],
            "dim": int(matrix.shape[1]), "npy": out_prefix + ".npy", "index": out_prefix + ".tsv",
            "model": info["source"]}


def compare_images(cfg: EmbedConfig, path1: str, path2: str) -> Dict[str, Any]:
    emb, info = _embedder(cfg)
    color = cfg.color or emb.color
    a = read_image(path1, color=color)
    b = read_image(path2, color=color)
    f = emb.embed_arrays([a, b], color)
    score = float(np.dot(f[0], f[1]))
    out: Dict[str, Any] = {"image1": path1, "image2": path2, "cosine": score}
    if cfg.threshold is not None:
        out["threshold"] = cfg.threshold
        out["same"] = bool(score > cfg.threshold)
    return out
