"""``ranface embed`` and ``ranface compare``: photos (detected and aligned with the model
card's template) or, with ``aligned``, aligned faces of any size -> embeddings, and a
same/different decision at the card's calibrated threshold (like ``deepface.verify``)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import numpy as np

from ..config import EmbedConfig
from ..data.image import image_extensions, read_image
from ..errors import DataError
from ..io_utils import check_writable_dir, progress_bar, publish_together


def list_images(root: str, not_regular: Optional[List[str]] = None) -> List[str]:
    """Image files under ``root`` (recursive, sorted, relative paths); none is an error.
    Non-regular files with an image name (FIFOs, devices) are skipped into ``not_regular``."""
    from ..eval.features import list_image_files

    if not os.path.isdir(root):
        raise DataError(root, "input folder not found")
    out = list_image_files(root, recursive=True, not_regular=not_regular)
    if not out:
        raise DataError(root, f"no images ({', '.join(image_extensions()[:10])}, ...) found")
    return out


def recognizer(cfg: EmbedConfig):
    """The :class:`~ranface.deploy.recognizer.FaceRecognizer` of ``cfg`` (the card's
    template, input size and flip unless ``cfg`` says otherwise)."""
    from .recognizer import FaceRecognizer

    return FaceRecognizer(cfg.model, cfg.backbone, cfg.device, flip=cfg.flip,
                          template=cfg.template, batch_size=cfg.batch_size)


def embed_folder(cfg: EmbedConfig, root: str, out_prefix: str, on_error: str = "raise",
                 progress: bool = False) -> Dict[str, Any]:
    """Writes ``out_prefix.npy`` (N x D float32, L2-normalised) and ``out_prefix.tsv``
    (row, relative path) atomically; returns counts. Photos without a detected face
    (and, with ``on_error='skip'``, unreadable files) are left out and counted."""
    # fail before loading the model and embedding everything, not at the final write
    check_writable_dir(os.path.dirname(os.path.abspath(out_prefix)))
    not_regular: List[str] = []
    files = list_images(root, not_regular)
    rec = recognizer(cfg)
    if cfg.aligned:
        from ..align.prepare import check_template

        check_template(root, rec.card.template, cfg.force)
    kept: List[str] = []
    skipped: List[str] = []
    feats: List[np.ndarray] = []
    batch: List[np.ndarray] = []
    names: List[str] = []

    def flush() -> None:
        if batch:
            feats.append(rec.embed_faces(batch))
            kept.extend(names)
            batch.clear()
            names.clear()

    bar = progress_bar(len(files), "embed", progress)
    for rel in files:
        path = os.path.join(root, rel)
        try:
            if cfg.aligned:
                face = read_image(path)
            else:
                face, why = rec.face_of(path)
                if face is None:
                    skipped.append(f"{path}: {why}")
        except DataError as exc:
            if on_error == "raise":
                raise
            skipped.append(str(exc))
            face = None
        if bar is not None:
            bar.update(1)
        if face is None:
            continue
        batch.append(face)
        names.append(rel)
        if len(batch) >= cfg.batch_size:
            flush()
    flush()
    if bar is not None:
        bar.close()
    if not kept:
        raise DataError(root, "no face could be embedded" + (f" ({skipped[0]})" if skipped else ""))
    matrix = np.concatenate(feats).astype(np.float32)
    index = "".join(f"{i}\t{p}\n" for i, p in enumerate(kept)).encode("utf-8")
    # the matrix and its index are one unit: both new or both old
    publish_together({out_prefix + ".npy": lambda fh: np.save(fh, matrix),
                      out_prefix + ".tsv": lambda fh: fh.write(index)})
    return {"embedded": len(kept), "skipped": len(skipped), "not_regular_files": len(not_regular),
            "skipped_examples": skipped[:5],
            "dim": int(matrix.shape[1]), "npy": out_prefix + ".npy", "index": out_prefix + ".tsv",
            "model": rec.card.provenance.source, "aligned_input": cfg.aligned,
            "template": None if cfg.aligned else rec.template}


def compare_images(cfg: EmbedConfig, path1: str, path2: str) -> Dict[str, Any]:
    """Cosine of two photos' (or aligned faces') embeddings and ``same`` at
    ``cfg.threshold`` or the model card's calibrated threshold."""
    for p in (path1, path2):
        if not os.path.isfile(p):
            raise DataError(p, "image not found")
    rec = recognizer(cfg)
    if cfg.aligned:
        for p in (path1, path2):
            from ..align.prepare import check_template

            check_template(os.path.dirname(os.path.abspath(p)), rec.card.template, cfg.force)
    return rec.verify(path1, path2, cfg.threshold, aligned=cfg.aligned)
