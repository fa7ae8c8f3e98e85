"""MobileFaceNet (Chen et al., CCBR 2018), the frozen "expert" of MR-GAN's perceptual
loss (Eq. 2, §4.2) and a light recognition backbone.

Layout of the paper's Table 1 for a 112x112 input:
conv3x3/2 (64) - depthwise conv3x3 (64) - bottlenecks (t, c, n, s) = (2, 64, 5, 2),
(4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1) - conv1x1 (512) -
linear GDConv7x7 (512) - linear 1x1 to the embedding. Bottlenecks are MobileNetV2
inverted residuals with PReLU; the embedding layer is a bias-free linear map followed
by BN1d, as in common re-implementations. About 1.0M parameters for 128-d.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from .depthwise import DepthwiseConv2d
from .registry import BackboneSpec, register_backbone

__all__ = ["MobileFaceNet", "Bottleneck", "mobilefacenet"]

# (expansion t, output channels c, repeats n, stride of the first repeat s)
_SETTINGS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))
# Which bottleneck groups end at 28, 14 and 7 pixels (the stages of forward_stages).
_STAGES = ((0,), (1, 2), (3, 4))


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0,
             groups: int = 1, act: bool = True) -> nn.Sequential:
    # depthwise layers: fast input gradients of the strided ones under bf16 (models.depthwise)
    conv = DepthwiseConv2d if groups > 1 and groups == cin else nn.Conv2d
    layers: List[nn.Module] = [
        conv(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand (PReLU) - 3x3 depthwise (PReLU) - 1x1 linear
    projection; identity shortcut when stride is 1 and the width is unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        self.expand = _conv_bn(cin, hidden, 1)
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, padding=1, groups=hidden)
        self.project = _conv_bn(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet; input (N, 3, 112, 112) normalised as ``spec`` says, output
    (N, embedding_size)."""

    def __init__(self, embedding_size: int = 128):
        super().__init__()
        self.spec = BackboneSpec(input_size=(112, 112), embedding_size=embedding_size,
                                 mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5),
                                 color="rgb")
        self.conv1 = _conv_bn(3, 64, 3, stride=2, padding=1)
        self.dw_conv1 = _conv_bn(64, 64, 3, padding=1, groups=64)
        groups = []
        cin = 64
        for t, c, n, s in _SETTINGS:
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(cin, c, s if i == 0 else 1, t))
                cin = c
            groups.append(blocks)
        self.stage1, self.stage2, self.stage3 = (
            nn.Sequential(*[b for g in idx for b in groups[g]]) for idx in _STAGES)
        self.conv2 = _conv_bn(128, 512, 1)
        # GDConv: a 7x7 depthwise conv without padding weighs each position separately,
        # where global average pooling would treat the face centre like its border.
        self.gdconv = _conv_bn(512, 512, 7, groups=512, act=False)
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.features = nn.BatchNorm1d(embedding_size)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Feature maps at 56, 28, 14 and 7 pixels (64, 64, 128, 512 channels)."""
        x = self.dw_conv1(self.conv1(x))
        outs = [x]
        x = self.stage1(x)
        outs.append(x)
        x = self.stage2(x)
        outs.append(x)
        outs.append(self.conv2(self.stage3(x)))
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk feature map (N, 512, 7, 7)."""
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (N, 512, 7, 7) -> embedding (N, embedding_size)."""
        return self.features(self.linear(torch.flatten(self.gdconv(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_backbone("mobilefacenet")
def mobilefacenet(embedding_size: int = 128) -> MobileFaceNet:
    """MobileFaceNet with a 128-d (paper default) or other size embedding."""
    return MobileFaceNet(embedding_size=embedding_size)
