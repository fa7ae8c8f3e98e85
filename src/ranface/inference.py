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
                 channels_last: Optional[bool] = None, fuse: bool = True):
        """``fuse``: embed with a copy of ``backbone`` whose affine layers are folded into
        the convolutions before them (:func:`ranface.models.fuse.fuse_for_inference`: the
        same function up to float rounding, ~3e-7 here) and, by default, in channels_last;
        ``backbone`` itself is left as it is. False: embed with ``backbone`` itself (bit
        for bit the unfused arithmetic; training-time validation passes False).
        ``channels_last`` None: where it helps (``precision.use_channels_last``; its
        inference rule, NHWC in fp32 on a CPU too, for the fused copy only); converts the
        module embedded with (the caller's backbone itself when not fused, as before)."""
        self.device = torch.device(device)
        self.fused = bool(fuse)
        if self.fused:
            import copy

            from .models.fuse import fuse_for_inference

            backbone = copy.deepcopy(backbone)
            fuse_for_inference(backbone)
        self.backbone = backbone.eval()
        # the fp32 inference rule only for the fused copy: the caller's module keeps its format
        self.channels_last = use_channels_last(self.device, precision, channels_last, inference=self.fused)
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

    def prepare(self, a: np.ndarray, color: str = "rgb") -> torch.Tensor:
        """One uint8 HxWx3 face in ``color`` order -> normalised float (H, W, 3) at the
        model's size in its colour order, contiguous: the per-face half of
        :meth:`preprocess`, safe to run in worker threads (the evaluation's decoding threads
        do, so the forward-pass thread only stacks them, :meth:`collate`)."""
        x = self._resized(a)
        if color != self.color:
            x = x.flip(1)
        return ((x - self.mean) / self.std)[0].permute(1, 2, 0).contiguous()

    def collate(self, faces: Sequence[torch.Tensor]) -> torch.Tensor:
        """Prepared faces -> an NCHW batch in the memory format the forward pass uses
        (stacking HWC faces gives channels_last strides for free)."""
        if not len(faces):
            return torch.zeros((0, 3, *self.input_size))
        x = torch.stack(list(faces)).permute(0, 3, 1, 2)
        return x if self.channels_last else x.contiguous()

    def preprocess(self, arrs: Sequence[np.ndarray], color: str = "rgb") -> torch.Tensor:
        """uint8 HxWx3 arrays in ``color`` order -> normalised NCHW at the model's size."""
        return self.collate([self.prepare(a, color) for a in arrs])

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

    def embed_prepared(self, faces: Sequence[torch.Tensor]) -> np.ndarray:
        """Faces from :meth:`prepare` -> (N, D) embeddings, ``batch_size`` at a time."""
        out = [self.embed_tensor(self.collate(faces[i:i + self.batch_size]))
               for i in range(0, len(faces), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)

    def embed_arrays(self, arrs: Sequence[np.ndarray], color: str = "rgb") -> np.ndarray:
        return self.embed_prepared([self.prepare(a, color) for a in arrs])

    def embed_batches(self, batches: Iterable[Sequence[np.ndarray]], color: str = "rgb") -> np.ndarray:
        return np.concatenate([self.embed_arrays(b, color) for b in batches]) if batches else np.zeros((0, 0))
