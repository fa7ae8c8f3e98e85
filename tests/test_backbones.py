"""Backbone registry, shapes, parameter counts and preprocessing specs."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from ranface.data.image import to_tensor
from ranface.errors import ConfigError
from ranface.models import (BackboneSpec, create_backbone, get_spec, list_backbones,
                            register_backbone, registry)
from ranface.models.mobilefacenet import Bottleneck

BUILTIN = ["iresnet100", "iresnet18", "iresnet34", "iresnet50", "mobilefacenet",
           "resnet29_dlib"]

# Parameter counts of insightface's arcface_torch IResNets (512-d) and of the papers.
PARAMS = {
    "iresnet18": (23.9e6, 24.1e6),
    "iresnet34": (34.0e6, 34.2e6),
    "iresnet50": (43.5e6, 43.7e6),
    "iresnet100": (65.1e6, 65.3e6),
    "mobilefacenet": (0.95e6, 1.05e6),          # Chen et al.: 0.99M
    "resnet29_dlib": (5_614_592, 5_614_592),    # exactly the face-api.js manifest
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_builtin_backbones_are_registered():
    assert list_backbones() == BUILTIN


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        create_backbone("resnet9000")
    msg = str(info.value)
    assert "resnet9000" in msg and "iresnet34" in msg and "mobilefacenet" in msg


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="embeding_size"):
        create_backbone("iresnet18", embeding_size=128)


def test_register_and_reuse_of_a_name(monkeypatch):
    monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))

    @register_backbone("tiny_test_net")
    def tiny(width: int = 4) -> nn.Module:
        return nn.Linear(3, width)

    assert "tiny_test_net" in list_backbones()
    assert create_backbone("tiny_test_net", width=7).out_features == 7
    with pytest.raises(ConfigError, match="already registered"):
        register_backbone("tiny_test_net")(lambda: nn.Identity())


@pytest.mark.parametrize("name", BUILTIN)
def test_parameter_count(name):
    lo, hi = PARAMS[name]
    assert lo <= n_params(create_backbone(name)) <= hi


def smoke_kwargs(name: str) -> dict:
    # An untrained IResNet in eval mode has identity BNs (running stats 0/1), and with
    # insightface's N(0, 0.1) conv init its residual sums grow ~5x per block (iresnet100
    # overflows float32); zero-initialised residual branches keep it finite.
    return {"zero_init_residual": True} if name.startswith("iresnet") else {}


@pytest.mark.parametrize("name", BUILTIN)
def test_forward_shape_and_finite(name):
    torch.manual_seed(0)
    model = create_backbone(name, **smoke_kwargs(name)).eval()
    spec = model.spec
    n = 1 if name in ("iresnet50", "iresnet100") else 2  # keep the big ones cheap
    x = torch.randn(n, 3, *spec.input_size)
    with torch.no_grad():
        y = model(x)
        head = model.forward_head(model.forward_features(x))
    assert y.shape == (n, spec.embedding_size)
    assert torch.isfinite(y).all()
    assert 0 < y.std() < 100
    torch.testing.assert_close(y, head)
    if n == 2:
        assert not torch.allclose(y[0], y[1])  # rows depend on their own input


def test_iresnet_default_init_in_train_mode_is_normalised():
    # Training mode normalises with batch statistics, so the default (insightface) init
    # is well-scaled where it matters; the final BN1d gives zero mean, unit variance.
    torch.manual_seed(0)
    model = create_backbone("iresnet18").train()
    with torch.no_grad():
        y = model(torch.randn(4, 3, 112, 112))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.mean(0), torch.zeros(512), atol=1e-4, rtol=0)
    assert 0.8 < float(y.var(0, unbiased=False).mean()) < 1.01


def test_iresnet100_layout():
    model = create_backbone("iresnet100")
    assert [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)] \
        == [3, 13, 30, 3]


@pytest.mark.parametrize("name,sizes,channels", [
    ("iresnet18", [56, 28, 14, 7], [64, 128, 256, 512]),
    ("mobilefacenet", [56, 28, 14, 7], [64, 64, 128, 512]),
    ("resnet29_dlib", [35, 17, 8, 2], [32, 64, 128, 256]),
])
def test_forward_stages(name, sizes, channels):
    model = create_backbone(name).eval()
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(1, 3, *model.spec.input_size))
    assert [s.shape[-1] for s in stages] == sizes
    assert [s.shape[1] for s in stages] == channels


@pytest.mark.parametrize("name,size", [("iresnet18", 128), ("mobilefacenet", 512)])
def test_embedding_size_option(name, size):
    model = create_backbone(name, embedding_size=size).eval()
    assert model.spec.embedding_size == size
    with torch.no_grad():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, size)


def test_specs():
    assert create_backbone("iresnet34").spec == BackboneSpec(
        (112, 112), 512, (127.5,) * 3, (127.5,) * 3, "rgb")
    assert create_backbone("mobilefacenet").spec.embedding_size == 128
    dlib = create_backbone("resnet29_dlib").spec
    assert dlib.input_size == (150, 150) and dlib.embedding_size == 128
    assert dlib.mean == (122.782, 117.001, 104.298) and dlib.std == (256.0,) * 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        dlib.embedding_size = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        BackboneSpec((112, 112), 512, color="hsv")


def test_spec_normalize_matches_data_to_tensor():
    spec = create_backbone("resnet29_dlib").spec
    arr = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    expected = to_tensor(arr, spec.mean, spec.std)
    got = spec.normalize(torch.from_numpy(arr).permute(2, 0, 1))
    torch.testing.assert_close(got, expected)
    assert abs(float(got[0, 0, 0]) - (int(arr[0, 0, 0]) - 122.782) / 256) < 1e-6


def test_get_spec_through_a_wrapper():
    model = create_backbone("mobilefacenet")

    class Wrapper(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert get_spec(Wrapper(model)) is model.spec
    with pytest.raises(ConfigError, match="Linear"):
        get_spec(nn.Linear(2, 2))


def test_iresnet_insightface_names_and_frozen_bn1d_weight():
    model = create_backbone("iresnet18")
    keys = set(model.state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "prelu.weight",
                "layer1.0.downsample.0.weight", "layer4.1.bn3.bias", "bn2.weight",
                "fc.weight", "fc.bias", "features.weight", "features.running_var"):
        assert key in keys
    assert not model.features.weight.requires_grad
    assert torch.equal(model.features.weight, torch.ones(512))


def test_zero_init_residual_makes_blocks_identity():
    model = create_backbone("iresnet18", zero_init_residual=True).eval()
    block = model.layer2[1]  # no downsample: identity shortcut
    assert torch.count_nonzero(block.bn3.weight) == 0
    x = torch.randn(1, 128, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)
    default = create_backbone("iresnet18").eval()
    with torch.no_grad():
        assert not torch.allclose(default.layer2[1](x), x)


def test_dropout_option_acts_in_training_only():
    torch.manual_seed(0)
    model = create_backbone("iresnet18", dropout=0.5)
    x = torch.randn(2, 512, 7, 7)  # dropout sits in the head: skip the trunk
    model.train()
    with torch.no_grad():
        a, b = model.forward_head(x), model.forward_head(x)
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(x), model.forward_head(x))


def test_mobilefacenet_bottleneck_layout():
    model = create_backbone("mobilefacenet")
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 5 + 1 + 6 + 1 + 2
    assert sum(b.residual for b in blocks) == 4 + 6 + 2
    assert model.gdconv[0].groups == 512 and model.gdconv[0].kernel_size == (7, 7)


def test_backward_gives_finite_gradients():
    torch.manual_seed(0)
    model = create_backbone("mobilefacenet").train()
    y = model(torch.randn(2, 3, 112, 112))
    y.pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.conv1[0].weight.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", ["iresnet18", "mobilefacenet", "resnet29_dlib"])
def test_torchscript_matches_eager(name):
    # The SPEC exports TorchScript: backbones must stay scriptable, not only traceable.
    torch.manual_seed(0)
    model = create_backbone(name).eval()
    x = torch.randn(1, 3, *model.spec.input_size)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-5)
