"""dlib's ResNet-29 metric network (``dlib_face_recognition_resnet_model_v1``), laid out
as face-api.js's ``FaceRecognitionNet`` so that its TensorFlow.js weights load
(see :mod:`ranface.models.faceapi`).

Input (N, 3, 150, 150) RGB normalised as (pixel - mean RGB) / 256; output a 128-d
descriptor (dlib: same person when the euclidean distance is below 0.6).

Order of operations, as in face-api.js (which follows dlib):
- every conv has a bias and is followed by a per-channel affine "scale" layer (dlib's
  affine_ replacing BN at inference); stride-1 3x3 convs pad 1 ("same"), stride-2 convs
  (the 7x7 stem and the first conv of each "down" block) do not pad ("valid");
- stem: conv7x7/2 + scale + ReLU, max-pool 3x3/2 valid;
- residual block: conv-scale-ReLU, conv-scale, + input, ReLU;
- down block: conv/2 (valid)-scale-ReLU, conv-scale; shortcut 2x2/2 average pool with
  zero channels appended; where the conv branch is smaller than the pooled shortcut
  (odd sizes) it is zero-padded at the bottom and right; sum, ReLU;
- global average pool, FC 256 -> 128 without bias.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from .registry import BackboneSpec

__all__ = ["ResNet29Dlib", "DLIB_MEAN_RGB", "DLIB_STD", "STAGE_BLOCKS"]

DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_STD = (256.0, 256.0, 256.0)
# (name, input channels, output channels, is a down block), in forward order; the
# names are face-api.js's and become this module's attribute names.
STAGE_BLOCKS = (
    ("conv32_1", 32, 32, False), ("conv32_2", 32, 32, False), ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True), ("conv64_1", 64, 64, False),
    ("conv64_2", 64, 64, False), ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True), ("conv128_1", 128, 128, False),
    ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True), ("conv256_1", 256, 256, False),
    ("conv256_2", 256, 256, False), ("conv256_down_out", 256, 256, True),
)


class Scale(nn.Module):
    """Per-channel affine y = x * weight + bias (dlib's affine_ layer, face-api's
    "scale")."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class ConvScale(nn.Module):
    """Conv (with bias) followed by :class:`Scale`; parameters ``conv.*`` and ``scale.*``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int):
        super().__init__()
        # TF "same" for a stride-1 odd kernel is symmetric; stride 2 is always "valid" here.
        padding = kernel // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=True)
        self.scale = Scale(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.conv(x))

    def fold_affine(self) -> int:
        """Inference only: the scale folded into the conv (:mod:`ranface.models.fuse`)."""
        if not isinstance(self.scale, Scale):
            return 0
        from .fuse import fold_into_conv

        fold_into_conv(self.conv, self.scale.weight.detach(), self.scale.bias.detach())
        self.scale = nn.Identity()
        return 1


class ResidualBlock(nn.Module):
    """Two 3x3 conv-scale layers; a down block halves the size and may widen."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        if not down and cin != cout:
            raise ValueError("a residual block that keeps the size keeps the width")
        self.down = down
        self.conv1 = ConvScale(cin, cout, 3, 2 if down else 1)
        self.conv2 = ConvScale(cout, cout, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        if self.down:
            short = F.avg_pool2d(x, 2, 2)
            pad_c = out.shape[1] - short.shape[1]
            if pad_c:
                short = F.pad(short, (0, 0, 0, 0, 0, pad_c))
            pad_h = short.shape[2] - out.shape[2]
            pad_w = short.shape[3] - out.shape[3]
            if pad_h or pad_w:
                out = F.pad(out, (0, pad_w, 0, pad_h))
        else:
            short = x
        return F.relu(out + short)


class ResNet29Dlib(nn.Module):
    """dlib's face recognition ResNet (29 conv layers); 150x150 -> 128-d descriptor.

    Trunk sizes for a 150 input: 72 (stem conv) -> 35 (max-pool) -> 17 -> 8 -> 4 -> 2.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spec = BackboneSpec(input_size=(150, 150), embedding_size=128,
                                 mean=DLIB_MEAN_RGB, std=DLIB_STD, color="rgb")
        self.conv32_down = ConvScale(3, 32, 7, 2)
        for name, cin, cout, down in STAGE_BLOCKS:
            self.add_module(name, ResidualBlock(cin, cout, down))
        self.fc = nn.Linear(256, 128, bias=False)

    def forward_stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Outputs of the 32/64/128/256-channel stages (35, 17, 8, 2 pixels at 150)."""
        # Spelled out (not a loop over names) so that torch.jit.script compiles it.
        x = F.max_pool2d(F.relu(self.conv32_down(x)), 3, 2)
        s32 = self.conv32_3(self.conv32_2(self.conv32_1(x)))
        s64 = self.conv64_3(self.conv64_2(self.conv64_1(self.conv64_down(s32))))
        s128 = self.conv128_2(self.conv128_1(self.conv128_down(s64)))
        s256 = self.conv256_down_out(self.conv256_2(self.conv256_1(self.conv256_down(s128))))
        return [s32, s64, s128, s256]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk feature map (N, 256, 2, 2) for a 150x150 input."""
        return self.forward_stages(x)[-1]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map -> 128-d descriptor (global mean, FC without bias)."""
        return self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
