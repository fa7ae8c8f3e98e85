"""Folding BN / scale layers into convolutions for inference (ranface.models.fuse)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from ranface.models.fuse import fold_bn, fold_conv_bn, fold_into_conv, fuse_for_inference
from ranface.models.registry import create_backbone


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking affine layers: statistics and scales away from their init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            elif type(m).__name__ == "Scale":
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model.eval()


def test_fold_into_conv_by_hand():
    conv = nn.Conv2d(1, 2, 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([1.0, 0.5]))
    fold_into_conv(conv, torch.tensor([3.0, 0.5]), torch.tensor([-1.0, 2.0]))
    # channel 0: (2x + 1) * 3 - 1 = 6x + 2; channel 1: (-x + 0.5) * 0.5 + 2 = -0.5x + 2.25
    assert conv.weight.flatten().tolist() == [6.0, -0.5]
    assert conv.bias.tolist() == [2.0, 2.25]


def test_fold_bn_by_hand_and_without_a_conv_bias():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(3.0)
        bn.bias.fill_(0.5)
    assert fold_bn(conv, bn)
    # BN(2x) = (2x - 1) / 2 * 3 + 0.5 = 3x - 1
    assert conv.weight.item() == 3.0 and conv.bias.item() == -1.0
    assert not fold_bn(conv, nn.ReLU())  # not a BN: nothing to fold
    assert not fold_bn(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(3))  # widths differ


@pytest.mark.parametrize("name,size,folded", [("resnet29_dlib", 150, 29), ("iresnet18", 112, 21),
                                               ("mobilefacenet", 112, 49)])
def test_fused_backbones_compute_the_same_embeddings(name, size, folded):
    model = _randomise(create_backbone(name))
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.inference_mode():
        ref = model(x)
    fused = copy.deepcopy(model)
    assert fuse_for_inference(fused) == folded
    assert fuse_for_inference(fused) == 0  # nothing left to fold
    # no conv is directly followed by a BN any more (the IResNet's bn1 comes before a conv)
    assert fold_conv_bn(copy.deepcopy(fused)) == 0
    with torch.inference_mode():
        out = fused(x)
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() < 1e-5 * scale
    # folding changed the parameters (a fused copy that skipped the layers would fail above)
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in model.parameters())


def test_embedder_fuses_a_copy_and_keeps_the_callers_module():
    from ranface.inference import Embedder

    model = _randomise(create_backbone("resnet29_dlib"), seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    faces = [np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8) for i in range(3)]
    fused = Embedder(model, batch_size=2)
    plain = Embedder(model, batch_size=2, fuse=False, channels_last=False)
    assert fused.fused and fused.channels_last and not plain.fused
    a, b = fused.embed_arrays(faces), plain.embed_arrays(faces)
    np.testing.assert_allclose(a, b, atol=2e-6)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert plain.backbone is model and fused.backbone is not model
