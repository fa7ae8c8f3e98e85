"""Margin-based classification heads (the classifier of L_c^HR, §3.4, §4.2), kept apart
from the backbones as in insightface's ``arcface_torch``.

Both heads hold a class-centre matrix W (num_classes x embedding_size), normalise it and
the embeddings, and return logits from cos(theta_j) = <x/|x|, W_j/|W_j|>:
- ArcFace (Deng et al., 2019): s * cos(theta_y + m) for the label y, s * cos(theta_j)
  otherwise; the paper uses s = 64, m = 0.5.
- CosFace (Wang et al., 2018): s * (cos(theta_y) - m) for the label, s * cos(theta_j)
  otherwise.
``labels=None`` (or a label of -1 for a row) applies no margin: s * cos(theta), for
inference and probabilities. Logits are always float32, also under autocast.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Type

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["MarginHead", "ArcFaceHead", "CosFaceHead", "create_head", "list_heads"]

# Keeps sqrt(1 - cos^2) and its gradient finite at |cos| = 1 in float32.
_COS_EPS = 1e-6


class MarginHead(nn.Module):
    """Normalised linear classifier; subclasses define the target-class margin."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0,
                 m: float = 0.5):
        super().__init__()
        if embedding_size < 1 or num_classes < 1:
            raise ConfigError(f"head needs embedding_size and num_classes >= 1, got "
                              f"{embedding_size}, {num_classes}")
        if s <= 0:
            raise ConfigError(f"head scale s must be positive, got {s}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.s = float(s)
        self.m = float(m)
        # Small normal init as in insightface's partial FC: early cosines near 0.
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size).normal_(0, 0.01))

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
                f"s={self.s}, m={self.m}")

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(theta): (N, num_classes) float32, clamped to [-1 + eps, 1 - eps]."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return F.linear(x, w).clamp(-1.0 + _COS_EPS, 1.0 - _COS_EPS)

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        """Margin-adjusted cos for the labelled class (before scaling by s)."""
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """embeddings (N, D), labels (N,) int64 in [0, C) or -1 (no margin) -> logits (N, C)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"expected embeddings (N, {self.embedding_size}), got "
                             f"{tuple(embeddings.shape)}")
        cos = self.cosine(embeddings)
        if labels is None:
            return cos * self.s
        if labels.shape != (cos.shape[0],):
            raise ValueError(f"labels must have shape ({cos.shape[0]},), got "
                             f"{tuple(labels.shape)}")
        labels = labels.to(device=cos.device, dtype=torch.long)
        with torch.autocast(device_type=cos.device.type, enabled=False):
            rows = torch.nonzero(labels != -1, as_tuple=True)[0]
            cols = labels[rows]
            cos_y = cos[rows, cols]
            # index_put (not in-place on cos) keeps autograd through both paths simple.
            cos = cos.index_put((rows, cols), self.target_logit(cos_y))
            return cos * self.s


class ArcFaceHead(MarginHead):
    """Additive angular margin: s * cos(theta_y + m) for the labelled class.

    cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m). Past theta = pi - m,
    cos(theta + m) would rise again and reward a worse angle; there, as insightface's
    arcface_torch (``easy_margin=False``) does, the target is cos(theta) - m * sin(m), a
    CosFace-like penalty that keeps the logit decreasing in theta. ``easy_margin=True``
    applies the margin only where cos(theta) > 0 and leaves the rest unchanged.
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0,
                 m: float = 0.5, easy_margin: bool = False):
        if not 0.0 <= m < math.pi / 2:
            raise ConfigError(f"ArcFace margin m must be in [0, pi/2), got {m}")
        super().__init__(embedding_size, num_classes, s, m)
        self.easy_margin = easy_margin
        self._cos_m = math.cos(m)
        self._sin_m = math.sin(m)
        self._threshold = math.cos(math.pi - m)
        self._fallback = math.sin(m) * m

    def extra_repr(self) -> str:
        return super().extra_repr() + f", easy_margin={self.easy_margin}"

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        sin_y = torch.sqrt((1.0 - cos_y * cos_y).clamp_min(0.0))
        cos_ym = cos_y * self._cos_m - sin_y * self._sin_m
        if self.easy_margin:
            return torch.where(cos_y > 0, cos_ym, cos_y)
        return torch.where(cos_y > self._threshold, cos_ym, cos_y - self._fallback)


class CosFaceHead(MarginHead):
    """Additive cosine margin: s * (cos(theta_y) - m) for the labelled class."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0,
                 m: float = 0.35):
        super().__init__(embedding_size, num_classes, s, m)

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        return cos_y - self.m


_HEADS: Dict[str, Type[MarginHead]] = {"arcface": ArcFaceHead, "cosface": CosFaceHead}


def list_heads() -> List[str]:
    """Names accepted by :func:`create_head`."""
    return sorted(_HEADS)


def create_head(name: str, embedding_size: int, num_classes: int, **kwargs) -> MarginHead:
    """Build head ``name`` ('arcface' or 'cosface'); ``kwargs`` are s, m (and
    easy_margin for ArcFace). Unknown names or options raise :class:`ConfigError`."""
    try:
        cls = _HEADS[name]
    except KeyError:
        raise ConfigError(f"unknown head {name!r}; known heads: "
                          f"{', '.join(list_heads())}") from None
    allowed = {"s", "m"} | ({"easy_margin"} if cls is ArcFaceHead else set())
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise ConfigError(f"head {name!r} has no option(s) {', '.join(extra)}; its options: "
                          f"{', '.join(sorted(allowed))}")
    return cls(embedding_size, num_classes, **kwargs)
