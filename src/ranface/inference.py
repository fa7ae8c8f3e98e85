"""Loading a trained model and turning aligned faces into embeddings.

A model is loaded from (a) a ``model.pt`` exported at the end of a training run, (b) any
training checkpoint ``ckpt-*.pt`` (the config inside says how to rebuild the backbone),
or (c) a face-api model folder (the imported dlib ResNet-29). Embeddings are flip-sum
(feature of the face plus feature of its mirror image, insightface's evaluation habit)
and L2-normalised.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CheckpointError
from .train.checkpoint import check_model_checkpoint, load_checkpoint, load_state_strict
from .train.precision import autocast

MODEL_FORMAT = "ranface-model/1"


def backbone_kwargs(model_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Constructor arguments of a backbone from the ``model`` section of a config."""
    kw: Dict[str, Any] = {}
    if model_cfg.get("embedding_size"):
        kw["embedding_size"] = int(model_cfg["embedding_size"])
    if model_cfg.get("dropout"):
        kw["dropout"] = float(model_cfg["dropout"])
    return kw


def build_backbone(name: str, kwargs: Dict[str, Any]) -> torch.nn.Module:
    from .models import create_backbone

    return create_backbone(name, **kwargs)


def model_package(backbone: torch.nn.Module, name: str, kwargs: Dict[str, Any],
                  config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The deployable form of a trained backbone: weights + how to rebuild + preprocessing."""
    from .train.distributed import unwrap

    bb = unwrap(backbone)
    return {"format": MODEL_FORMAT, "backbone": name, "backbone_kwargs": dict(kwargs),
            "spec": _spec_dict(bb), "state_dict": {k: v.detach().cpu() for k, v in bb.state_dict().items()},
            "config": config or {}}


def _spec_dict(bb: torch.nn.Module) -> Dict[str, Any]:
    spec = getattr(bb, "spec", None)
    if spec is None:
        return {}
    d = asdict(spec)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def is_faceapi_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(
        os.path.join(path, "face_recognition_model-weights_manifest.json"))


def load_model(path: str, backbone: str = "", device: Any = "cpu") -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Load a backbone for inference (eval mode). Returns (module, info)."""
    if not path:
        raise CheckpointError(None, "no model given (--model PATH: a model.pt, a training "
                              "checkpoint, or a face-api model folder)")
    if os.path.isdir(path):
        if is_faceapi_dir(path):
            name = backbone or "resnet29_dlib"
            bb = build_backbone(name, {"pretrained": path})
            info = {"source": path, "backbone": name, "kind": "faceapi"}
        else:
            from .train.checkpoint import CheckpointManager

            ck = CheckpointManager(os.path.join(path, "checkpoints")).latest()
            mp = os.path.join(path, "model.pt")
            target = mp if os.path.exists(mp) else ck
            if target is None:
                raise CheckpointError(path, "folder holds no model.pt, no checkpoints/ and no "
                                      "face-api manifest")
            return load_model(target, backbone, device)
    else:
        state = load_checkpoint(path)
        check_model_checkpoint(state, path, MODEL_FORMAT)
        if state.get("format") == MODEL_FORMAT:
            name, kw, sd = state["backbone"], dict(state.get("backbone_kwargs", {})), state["state_dict"]
        elif "modules" in state and "config" in state:
            cfg = state["config"]
            model_cfg = cfg.get("model", {})
            name = model_cfg.get("backbone")
            kw = backbone_kwargs(model_cfg)
            if "backbone" not in state["modules"]:
                raise CheckpointError(path, "training checkpoint has no 'backbone' module")
            sd = state["modules"]["backbone"]
        else:
            raise CheckpointError(path, "not a ranface model or training checkpoint "
                                  f"(keys: {sorted(state)[:8]})")
        if backbone and backbone != name:
            raise CheckpointError(path, f"holds a {name} backbone, not {backbone}")
        bb = build_backbone(name, kw)
        load_state_strict(bb, sd, path, what=f"{name} backbone")
        info = {"source": path, "backbone": name, "kind": "ranface", "kwargs": kw}
    bb.eval().to(device)
    for p in bb.parameters():
        p.requires_grad_(False)
    info["spec"] = _spec_dict(bb)
    return bb, info


class Embedder:
    """Aligned uint8 faces -> L2-normalised (flip-sum) embeddings."""

    def __init__(self, backbone: torch.nn.Module, device: Any = "cpu", flip: bool = True,
                 precision: str = "fp32", batch_size: int = 64):
        self.backbone = backbone.eval()
        self.device = torch.device(device)
        self.flip = flip
        self.precision = precision
        self.batch_size = batch_size
        spec = getattr(backbone, "spec", None)
        self.input_size = tuple(spec.input_size) if spec is not None else (112, 112)
        self.mean = torch.tensor(spec.mean if spec is not None else (127.5,) * 3).view(1, 3, 1, 1)
        self.std = torch.tensor(spec.std if spec is not None else (127.5,) * 3).view(1, 3, 1, 1)
        self.color = spec.color if spec is not None else "rgb"

    def preprocess(self, arrs: Sequence[np.ndarray], color: str = "rgb") -> torch.Tensor:
        """uint8 HxWx3 arrays in ``color`` order -> normalised NCHW at the model's size."""
        x = torch.from_numpy(np.stack([np.ascontiguousarray(a) for a in arrs])).permute(0, 3, 1, 2).float()
        if color != self.color:
            x = x.flip(1)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 255)
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        with autocast(self.device, self.precision):
            f = self.backbone(x).float()
            if self.flip:
                f = f + self.backbone(x.flip(-1)).float()
        return F.normalize(f, dim=1).cpu()

    def embed_arrays(self, arrs: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        out: List[torch.Tensor] = []
        for i in range(0, len(arrs), self.batch_size):
            out.append(self.embed_tensor(self.preprocess(arrs[i:i + self.batch_size], color)))
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return torch.cat(out).numpy()

    def embed_batches(self, batches: Iterable[Sequence[np.ndarray]], color: str = "rgb") -> np.ndarray:
        return np.concatenate([self.embed_arrays(b, color) for b in batches]) if batches else np.zeros((0, 0))
