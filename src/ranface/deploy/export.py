"""``ranface export``: a trained backbone -> ONNX (dynamic batch) + TorchScript + a JSON
sidecar describing the preprocessing, checked against PyTorch before anything is kept.

The exported graphs are the bare backbone: input (N, 3, H, W) float32, already
normalised as ``(pixel - mean) / std`` with pixels 0..255 in the sidecar's colour order;
output (N, D) un-normalised embeddings. ranface itself L2-normalises ``f(x) + f(flip(x))``
(flip-sum); the sidecar says so.

Self-check: real faces (crude centre crops of a few photos, by default from the bundled
LFW, or the user's own images) go through PyTorch, onnxruntime (CPU) and the TorchScript
module at two batch sizes (the dynamic batch axis is exercised); every embedding must
have cosine >= 1 - ``tolerance`` with PyTorch's, else the export fails and writes
nothing. Files are written atomically (temporary file + rename) after the check passes.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..errors import ConfigError, DataError, RanfaceError
from ..io_utils import atomic_write_bytes, atomic_write_text, check_writable_dir

__all__ = ["ExportConfig", "export_model", "EXPORT_FORMAT", "require_onnxruntime",
           "check_images"]

EXPORT_FORMAT = "ranface-export/1"
FORMATS = ("onnx", "torchscript")


@dataclass
class ExportConfig:
    """``ranface export`` settings."""

    model: str = ""  # model.pt, training checkpoint / run dir, or face-api folder
    backbone: str = ""  # only for a face-api folder (default resnet29_dlib)
    out: str = ""  # output folder: model.onnx, model.torchscript.pt, model.json
    formats: List[str] = field(default_factory=lambda: ["onnx", "torchscript"])
    opset: int = 17
    template: str = "auto"  # alignment template recorded in the sidecar; auto: known from the model
    check_images: List[str] = field(default_factory=list)  # images/folders for the check; []: LFW crops
    check_count: int = 6  # images used for the check
    tolerance: float = 1e-4  # 1 - cosine allowed between PyTorch and the exported model
    data_root: str = ""  # "" -> the bundled shared data (for the default check images)


def require_onnxruntime() -> Any:
    try:
        import onnxruntime  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise RanfaceError("checking an ONNX export needs the optional package onnxruntime: "
                           "pip install -r requirements-deploy.txt (or onnxruntime)") from None
    return onnxruntime


def check_images(paths: Sequence[str], data_root: str, count: int) -> Tuple[List[np.ndarray], List[str]]:
    """uint8 RGB images for the parity check: the user's (files or folders), or the first
    ``count`` LFW photos' central half (a crude face crop)."""
    from ..data.image import read_image  # noqa: PLC0415
    from .gallery import _images_under  # noqa: PLC0415

    files: List[str] = []
    crop = False
    if paths:
        for p in paths:
            files.extend(_images_under(p) if os.path.isdir(p) else [p])
    else:
        from ..config import default_data_root  # noqa: PLC0415

        lfw = os.path.join(data_root or default_data_root(), "lfw-gray", "images")
        if not os.path.isdir(lfw):
            raise DataError(lfw, "default check images (LFW) not found; give --check-images")
        for name in sorted(os.listdir(lfw)):
            files.extend(_images_under(os.path.join(lfw, name))[:1])
            if len(files) >= count:
                break
        crop = True
    files = files[:max(1, count)]
    if not files:
        raise DataError(None, "no images for the export check")
    out = []
    for f in files:
        img = read_image(f)
        if crop:
            h, w = img.shape[:2]
            img = img[h // 4:h - h // 4, w // 4:w - w // 4]
        out.append(img)
    return out, files


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a.astype(np.float64) * b, axis=1)


def _export_onnx(module: Any, example: Any, opset: int) -> bytes:
    import torch  # noqa: PLC0415

    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of torch.export, which
        # needs onnxscript and does not yet handle every backbone's shape logic.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), buf, dynamo=False, input_names=["input"],
                              output_names=["embedding"], opset_version=int(opset),
                              dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})
        except Exception as exc:  # noqa: BLE001  (any exporter failure: report, keep nothing)
            raise RanfaceError(f"ONNX export failed: {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc
    return buf.getvalue()


def _export_torchscript(module: Any, example: Any) -> bytes:
    import torch  # noqa: PLC0415

    with warnings.catch_warnings():
        # Tracer warnings are about shape-dependent branches, constant for the fixed input size.
        warnings.simplefilter("ignore")
        try:
            traced = torch.jit.trace(module, example, check_trace=False)
        except Exception as exc:  # noqa: BLE001
            raise RanfaceError(f"TorchScript export failed: {type(exc).__name__}: {exc}") from exc
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def export_model(cfg: ExportConfig, module: Any = None, card: Any = None) -> Dict[str, Any]:
    """Export ``cfg.model`` (or an already loaded ``module`` with its model ``card``, or a
    dict with ``backbone``/``kwargs``/``template`` to derive one), check parity and write
    the files; returns the sidecar (also written as ``model.json``, with the card, so
    the ONNX file can be loaded back by :func:`ranface.models.loader.load_model`)."""
    import torch  # noqa: PLC0415

    from .. import __version__  # noqa: PLC0415
    from ..inference import Embedder  # noqa: PLC0415
    from ..models.card import ModelCard  # noqa: PLC0415
    from ..models.loader import card_for_module, load_model  # noqa: PLC0415
    from .gallery import model_fingerprint  # noqa: PLC0415

    formats = list(dict.fromkeys(cfg.formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"formats must be a non-empty subset of {FORMATS}, got {cfg.formats}")
    if not cfg.out:
        raise ConfigError("export: give the output folder (--out)")
    if not 0 < cfg.tolerance < 1:
        raise ConfigError(f"tolerance must lie in (0, 1), got {cfg.tolerance}")
    if "onnx" in formats:
        require_onnxruntime()
    check_writable_dir(cfg.out)
    if module is None:
        module, card = load_model(cfg.model, cfg.backbone, "cpu")
    module = module.eval().cpu()
    spec = getattr(module, "spec", None)
    if spec is None:
        raise ConfigError(f"{type(module).__name__} has no .spec: not a ranface backbone")
    if not isinstance(card, ModelCard):
        given = dict(card or {})
        card = card_for_module(module, str(given.get("backbone") or type(module).__name__),
                               dict(given.get("kwargs") or {}), template=given.get("template"))
        card.provenance.kind = str(given.get("kind") or "module")
    if cfg.template != "auto":
        card.template = cfg.template or None
    template = card.template
    info = card.info()
    h, w = spec.input_size

    images, files = check_images(cfg.check_images, cfg.data_root, cfg.check_count)
    emb = Embedder(module, "cpu", flip=False, fuse=False, channels_last=False)  # its preprocess only
    x = emb.preprocess(images, "rgb")  # resized to the input size, normalised, model colour order
    with torch.inference_mode():
        ref = module(x).float().numpy()
    example = x[:2] if len(x) >= 2 else x.repeat(2, 1, 1, 1)

    blobs: Dict[str, bytes] = {}
    check: Dict[str, Any] = {"images": files, "tolerance": cfg.tolerance,
                             "batch_sizes": sorted({len(x), 1})}
    if "onnx" in formats:
        ort = require_onnxruntime()
        blobs["onnx"] = _export_onnx(module, example, cfg.opset)
        sess = ort.InferenceSession(blobs["onnx"], providers=["CPUExecutionProvider"])
        out = np.concatenate([sess.run(None, {"input": x.numpy()})[0],
                              sess.run(None, {"input": x[:1].numpy()})[0]])
        check["onnx"] = _parity(out, ref, cfg.tolerance, "onnxruntime")
    if "torchscript" in formats:
        blobs["torchscript"] = _export_torchscript(module, example)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            ts = torch.jit.load(io.BytesIO(blobs["torchscript"]), map_location="cpu")
        # The profiling executor spends seconds optimising the first calls; the check is
        # about the saved graph's numbers, which its CPU passes do not change.
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            out = np.concatenate([ts(x).float().numpy(), ts(x[:1]).float().numpy()])
        check["torchscript"] = _parity(out, ref, cfg.tolerance, "TorchScript")

    names = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
    sidecar = {
        "format": EXPORT_FORMAT,
        "card": card.to_dict(),
        "fingerprint": model_fingerprint(module),
        "backbone": info.get("backbone"),
        "backbone_kwargs": info.get("kwargs", {}),
        "source": os.path.abspath(cfg.model) if cfg.model else info.get("source"),
        "input": {"name": "input", "shape": ["batch", 3, h, w], "dtype": "float32",
                  "size": [h, w], "color": spec.color, "mean": list(spec.mean),
                  "std": list(spec.std), "layout": "NCHW",
                  "normalisation": "(pixel - mean) / std, pixels 0..255 in `color` order"},
        "output": {"name": "embedding", "shape": ["batch", spec.embedding_size],
                   "embedding_size": spec.embedding_size, "normalised": False,
                   "usage": "ranface compares L2-normalised f(x) + f(horizontal flip of x) "
                            "by cosine similarity"},
        "alignment": {"template": template, "points": "5-point similarity transform "
                      "(eyes, nose, mouth corners) to the template scaled to the input size"
                      if template else None},
        "files": {f: {"path": names[f], "sha256": hashlib.sha256(blobs[f]).hexdigest(),
                      "bytes": len(blobs[f])} for f in formats},
        "opset": cfg.opset if "onnx" in formats else None,
        "check": check,
        "versions": {"ranface": __version__, "torch": torch.__version__},
    }
    for f in formats:
        atomic_write_bytes(os.path.join(cfg.out, names[f]), blobs[f])
    # The sidecar last: its presence means every file it lists is complete and checked.
    atomic_write_text(os.path.join(cfg.out, "model.json"), json.dumps(sidecar, indent=1) + "\n")
    return sidecar


def _parity(out: np.ndarray, ref: np.ndarray, tol: float, what: str) -> Dict[str, float]:
    # ``out`` is the full batch followed by a batch of one (the first image again).
    ref2 = np.concatenate([ref, ref[:1]])
    if out.shape != ref2.shape:
        raise RanfaceError(f"{what} export check failed: output shape {out.shape}, "
                           f"PyTorch {ref2.shape}")
    cos = _cosines(out, ref2)
    worst = float(cos.min()) if np.isfinite(cos).all() else float("nan")
    if not worst >= 1 - tol:
        raise RanfaceError(f"{what} export check failed: cosine to PyTorch {worst:.8f} < "
                           f"1 - {tol:g}; nothing written")
    diff = float(np.abs(out - ref2).max())
    return {"min_cosine": worst, "max_abs_diff": diff,
            "max_rel_diff": diff / max(float(np.abs(ref2).max()), 1e-12)}
