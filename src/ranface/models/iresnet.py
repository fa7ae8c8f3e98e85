"""IResNet-18/34/50/100: the "improved" ResNets of insightface's ``arcface_torch``.

Module and parameter names follow insightface's layout (``conv1``, ``bn1``, ``prelu``,
``layer1..4``, ``bn2``, ``fc``, ``features``) so that its PyTorch checkpoints load with
``load_state_dict`` unchanged. The paper's HR/LR/MR models (§4.2) are ``iresnet34``
(CASIA-WebFace) and ``iresnet50`` (MS1M); the embedding they produce is f_HR.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from .registry import BackboneSpec, register_backbone

__all__ = ["IBasicBlock", "IResNet", "iresnet18", "iresnet34", "iresnet50", "iresnet100"]

_BN_EPS = 1e-5


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus shortcut; no activation after the sum."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: Optional[nn.Module] = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=_BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=_BN_EPS)
        self.downsample = downsample

    def fold_affine(self) -> int:
        """Inference only: bn2 into conv1 and bn3 into conv2 (:mod:`ranface.models.fuse`;
        bn1 comes before a conv and stays)."""
        from .fuse import fold_bn

        n = 0
        for conv, bn in (("conv1", "bn2"), ("conv2", "bn3")):
            if fold_bn(getattr(self, conv), getattr(self, bn)):
                setattr(self, bn, nn.Identity())
                n += 1
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


def _make_layer(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
    """One stage: a stride-2 block with a conv1x1-BN shortcut, then ``blocks - 1`` more."""
    downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes, 1, stride=2, bias=False),
        nn.BatchNorm2d(planes, eps=_BN_EPS),
    )
    layers = [IBasicBlock(inplanes, planes, 2, downsample)]
    layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class IResNet(nn.Module):
    """Stem conv3x3-BN-PReLU, four stride-2 stages of :class:`IBasicBlock`, then the
    "OE" head BN2d-dropout-flatten-FC-BN1d.

    Input (N, 3, 112, 112) normalised as ``spec`` says; output (N, embedding_size).
    The final BN1d keeps its weight at 1 and frozen, as insightface does, so only its
    shift is learnt. Convs start from insightface's N(0, 0.1): with batch statistics
    (training) every conv is followed by a BN and the scale is harmless, but an
    *untrained* model in eval mode has identity BNs and its residual sums grow by ~5x a
    block (iresnet100 overflows float32); smoke tests of untrained models should use
    ``zero_init_residual=True``, which zeroes each branch's last BN (bn3) so that every
    block starts as its shortcut.
    """

    fc_scale = 7 * 7  # 112 / 2**4 = 7

    def __init__(self, layers: Sequence[int], embedding_size: int = 512,
                 dropout: float = 0.0, zero_init_residual: bool = False):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"IResNet needs 4 positive stage depths, got {list(layers)}")
        self.spec = BackboneSpec(input_size=(112, 112), embedding_size=embedding_size,
                                 mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5),
                                 color="rgb")
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=_BN_EPS)
        self.prelu = nn.PReLU(64)
        self.layer1 = _make_layer(64, 64, layers[0])
        self.layer2 = _make_layer(64, 128, layers[1])
        self.layer3 = _make_layer(128, 256, layers[2])
        self.layer4 = _make_layer(256, 512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=_BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * self.fc_scale, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=_BN_EPS)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)
        if zero_init_residual:
            # Last BN of each residual branch: every block starts as the identity.
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.zeros_(m.bn3.weight)

    def fold_affine(self) -> int:
        """Inference only: the stem's bn1 into conv1 (the blocks fold their own;
        :mod:`ranface.models.fuse`)."""
        from .fuse import fold_bn

        if fold_bn(self.conv1, self.bn1):
            self.bn1 = nn.Identity()
            return 1
        return 0

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Outputs of layer1..layer4 (56, 28, 14, 7 pixels for a 112 input)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x1 = self.layer1(x)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [x1, x2, x3, self.layer4(x3)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk feature map (N, 512, 7, 7)."""
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (N, 512, 7, 7) -> embedding (N, embedding_size)."""
        x = torch.flatten(self.bn2(x), 1)
        return self.features(self.fc(self.dropout(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _iresnet(layers: Sequence[int], embedding_size: int, dropout: float,
             zero_init_residual: bool) -> IResNet:
    return IResNet(layers, embedding_size=embedding_size, dropout=dropout,
                   zero_init_residual=zero_init_residual)


@register_backbone("iresnet18")
def iresnet18(embedding_size: int = 512, dropout: float = 0.0,
              zero_init_residual: bool = False) -> IResNet:
    """IResNet-18, stages [2, 2, 2, 2] (about 24.0M parameters)."""
    return _iresnet((2, 2, 2, 2), embedding_size, dropout, zero_init_residual)


@register_backbone("iresnet34")
def iresnet34(embedding_size: int = 512, dropout: float = 0.0,
              zero_init_residual: bool = False) -> IResNet:
    """IResNet-34, stages [3, 4, 6, 3] (about 34.1M parameters); the paper's backbone."""
    return _iresnet((3, 4, 6, 3), embedding_size, dropout, zero_init_residual)


@register_backbone("iresnet50")
def iresnet50(embedding_size: int = 512, dropout: float = 0.0,
              zero_init_residual: bool = False) -> IResNet:
    """IResNet-50, stages [3, 4, 14, 3] (about 43.6M parameters)."""
    return _iresnet((3, 4, 14, 3), embedding_size, dropout, zero_init_residual)


@register_backbone("iresnet100")
def iresnet100(embedding_size: int = 512, dropout: float = 0.0,
               zero_init_residual: bool = False) -> IResNet:
    """IResNet-100, stages [3, 13, 30, 3] (about 65.2M parameters)."""
    return _iresnet((3, 13, 30, 3), embedding_size, dropout, zero_init_residual)
