"""precision=auto (issue 16): CPU feature detection, channels_last and compile choices."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ranface.errors import ConfigError
from ranface.train.precision import (BF16_CPU_FLAGS, cpu_flags, cpu_has_fast_bf16, resolve_precision,
                                     use_channels_last, use_compile)

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n\n"
                 "processor\t: 1\nflags\t\t: fpu other\n")
    assert cpu_flags(str(p)) == {"fpu", "sse2", "avx512f", "avx512_bf16", "amx_tile"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(str(arm)) == {"fp", "asimd", "bf16"}


@pytest.mark.parametrize("flags,fast", [
    ({"avx512f", "avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True),
    ({"avx512f", "avx2"}, False), ({"amx_tile"}, False), (set(), False)])
def test_fast_bf16_needs_amx_or_avx512_bf16(flags, fast, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert cpu_has_fast_bf16(flags) is fast
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert cpu_has_fast_bf16(flags) is False
    assert set(BF16_CPU_FLAGS) == {"amx_bf16", "avx512_bf16"}


def test_auto_precision_follows_the_cpu(monkeypatch):
    import ranface.train.precision as P

    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda flags=None: True)
    assert resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(P, "cpu_has_fast_bf16", lambda flags=None: False)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ConfigError):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError):
        resolve_precision("half", CPU)


def test_channels_last_in_reduced_precision_and_cpu_inference():
    # training: NHWC under bf16/fp16 on either device, NCHW in fp32
    assert use_channels_last(CPU, "bf16") is True
    assert use_channels_last(CUDA, "fp16") is True
    assert use_channels_last(CPU, "fp32") is False
    assert use_channels_last(CUDA, "fp32") is False
    # an explicit setting wins
    assert use_channels_last(CPU, "bf16", False) is False
    assert use_channels_last(CPU, "fp32", True) is True
    # a no-grad forward pass (Embedder): NHWC on the CPU in fp32 too (measured faster for
    # every backbone); on a GPU fp32 stays NCHW; an explicit setting still wins
    assert use_channels_last(CPU, "fp32", inference=True) is True
    assert use_channels_last(CPU, "bf16", inference=True) is True
    assert use_channels_last(CUDA, "fp32", inference=True) is False
    assert use_channels_last(CUDA, "bf16", inference=True) is True
    assert use_channels_last(CPU, "fp32", False, inference=True) is False


def test_compile_auto_only_for_long_cpu_runs():
    assert use_compile(None, CPU, steps=999, min_steps=1000) is False
    assert use_compile(None, CPU, steps=1000, min_steps=1000) is True
    assert use_compile(None, CUDA, steps=10**6, min_steps=1000) is False  # slower than eager AMP on the H200
    assert use_compile(None, CPU, steps=10**6, min_steps=0) is False  # 0: never automatically
    assert use_compile(True, CUDA, steps=1, min_steps=1000) is True
    assert use_compile(False, CPU, steps=10**6, min_steps=1) is False


def test_embedder_runs_channels_last_with_the_same_embeddings():
    from ranface.inference import Embedder

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten()).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    plain = Embedder(net, precision="fp32", flip=True).embed_tensor(x)
    cl = Embedder(net, precision="fp32", flip=True, channels_last=True)
    assert cl.channels_last and next(cl.backbone.parameters()).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl.embed_tensor(x), plain, rtol=1e-5, atol=1e-6)
    # the fused copy is converted, the caller's module is not
    assert not next(net.parameters()).is_contiguous(memory_format=torch.channels_last)
