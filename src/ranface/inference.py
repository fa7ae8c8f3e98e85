"""Aligned faces -> embeddings (:class:`Embedder`).

Models are loaded by :func:`ranface.models.loader.load_model` (module + model card).
Embeddings are flip-sum (feature of the face plus feature of its mirror image,
insightface's evaluation habit; the card's ``flip``) and L2-normalised.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .train.precision import autocast, use_channels_last

# The one model loader lives in ranface.models.loader; re-exported for callers of old.
from .models.loader import MODEL_FORMAT, load_model, model_package  # noqa: E402,F401


def spec_dict(bb: torch.nn.Module) -> Dict[str, Any]:
    spec = getattr(bb, "spec", None)
    if spec is None:
        return {}
    d = asdict(spec)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class Embedder:
    """Aligned uint8 faces -> L2-normalised (flip-sum) embeddings."""

    def __init__(self, backbone: torch.nn.Module, device: Any = "cpu", flip: bool = True,
                 precision: str = "fp32", batch_size: int = 64,
                 channels_last: Optional[bool] = None):
        self.backbone = backbone.eval()
        self.device = torch.device(device)
        # None: where it helps (precision.use_channels_last); converts the backbone in place
        self.channels_last = use_channels_last(backbone, self.device, precision, channels_last)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
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
        x = torch.cat([self._resized(a) for a in arrs]) if len(arrs) else torch.zeros((0, 3, *self.input_size))
        if color != self.color:
            x = x.flip(1)
        return (x - self.mean) / self.std

    def _resized(self, a: np.ndarray) -> torch.Tensor:
        # faces of mixed sizes are resized one by one, then batched
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 255)
        return x

    @torch.inference_mode()
    def embed_tensor(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
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
