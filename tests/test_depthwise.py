"""models.depthwise: the depthwise convolution whose strided input gradient runs in fp32
under bf16 on the CPU (oneDNN's bf16 kernel for it is 20-100x slower)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ranface.models import create_backbone
from ranface.models.depthwise import (DepthwiseConv2d, _FP32InputGrad, set_fp32_input_grad,
                                      slow_reduced_input_grad)


def _pair(c=8, stride=2, bias=False, seed=0):
    torch.manual_seed(seed)
    ref = nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=bias)
    dw = DepthwiseConv2d(c, c, 3, stride, 1, groups=c, bias=bias)
    dw.load_state_dict(ref.state_dict())
    return ref, dw


def _grads(conv, x, g, autocast):
    x = x.detach().clone().requires_grad_(True)
    conv.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = conv(x)
    y.backward(g.to(y.dtype))
    return y.detach(), x.grad, conv.weight.grad, None if conv.bias is None else conv.bias.grad


def test_same_parameters_and_state_dict_keys_as_conv2d():
    ref, dw = _pair(bias=True)
    assert isinstance(dw, nn.Conv2d)
    assert list(dw.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("cl", [False, True])
def test_fp32_is_conv2d_bit_for_bit(stride, cl):
    ref, dw = _pair(stride=stride, bias=True)
    x = torch.randn(2, 8, 13, 13)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(ref(x))
    for a, b in zip(_grads(ref, x, g, False), _grads(dw, x, g, False)):
        assert torch.equal(a, b)


def test_which_calls_take_the_fp32_input_gradient():
    _, dw = _pair(stride=2)
    x = torch.randn(1, 8, 9, 9)
    assert not slow_reduced_input_grad(dw, x)  # no gradient wanted
    x.requires_grad_(True)
    assert not slow_reduced_input_grad(dw, x)  # fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert slow_reduced_input_grad(dw, x)
        with torch.no_grad():
            assert not slow_reduced_input_grad(dw, x)
    assert slow_reduced_input_grad(dw, x.detach().bfloat16().requires_grad_(True))
    _, dw1 = _pair(stride=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not slow_reduced_input_grad(dw1, x)  # stride 1: oneDNN's bf16 kernel is fast
    full = nn.Conv2d(8, 8, 3, 2, 1)  # not depthwise
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not slow_reduced_input_grad(full, x)


@pytest.mark.parametrize("cl", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_bf16_strided_forward_and_weight_grads_are_torchs_input_grad_is_fp32s(cl, bias):
    ref, dw = _pair(c=16, stride=2, bias=bias, seed=1)
    x = torch.randn(4, 16, 15, 15)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        g = torch.randn_like(ref(x))
    y_ref, gx_ref, gw_ref, gb_ref = _grads(ref, x, g, True)
    y, gx, gw, gb = _grads(dw, x, g, True)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)  # the same bf16 conv2d
    assert torch.equal(gw, gw_ref)  # the weight gradient: the same bf16 kernel
    if bias:
        assert torch.equal(gb, gb_ref)
    # the input gradient: fp32 arithmetic on the bf16 operands, rounded to bf16 at the end
    xb = x.bfloat16().float().requires_grad_(True)
    F.conv2d(xb, ref.weight.detach().bfloat16().float(), None, 2, 1, 1, 16).backward(g.bfloat16().float())
    assert gx.dtype == x.dtype  # autocast's cast back to the fp32 input
    assert torch.equal(gx, xb.grad.bfloat16().float())
    # which is what oneDNN's slow bf16 kernel gives too (fp32 accumulation, one rounding)
    assert torch.equal(gx, gx_ref)


def test_function_in_fp32_matches_autograd_of_conv2d():
    torch.manual_seed(2)
    x = torch.randn(2, 6, 11, 10, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    y = _FP32InputGrad.apply(x, w, b, (2, 2), (1, 1), (1, 1), 6)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w, b), g)
    want = torch.autograd.grad(F.conv2d(x, w, b, 2, 1, 1, 6), (x, w, b), g)
    for a, e in zip(got, want):
        assert torch.equal(a, e)
    # only what is asked for is computed
    gx, = torch.autograd.grad(_FP32InputGrad.apply(x, w.detach(), None, (2, 2), (1, 1), (1, 1), 6), (x,), g)
    assert torch.equal(gx, want[0])


def test_mobilefacenet_uses_it_for_its_depthwise_layers_only():
    net = create_backbone("mobilefacenet")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    dws = [m for m in convs if isinstance(m, DepthwiseConv2d)]
    assert dws and all(m.groups == m.in_channels > 1 for m in dws)
    assert all(m.groups == 1 for m in convs if not isinstance(m, DepthwiseConv2d))
    assert sum(1 for m in dws if m.stride != (1, 1)) == 3  # the three down-sampling bottlenecks


def test_switched_off_it_runs_torchs_kernel(monkeypatch):
    net = create_backbone("mobilefacenet")
    calls = []
    monkeypatch.setattr(_FP32InputGrad, "apply", lambda *a: calls.append(1) or F.conv2d(*a))
    x = torch.randn(2, 3, 112, 112, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
    assert len(calls) == 3
    assert set_fp32_input_grad(net, False) == sum(isinstance(m, DepthwiseConv2d) for m in net.modules())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
    assert len(calls) == 3


def test_string_padding_falls_back_to_conv2d():
    torch.manual_seed(3)
    ref = nn.Conv2d(8, 8, 3, 2, padding="valid", groups=8)
    dw = DepthwiseConv2d(8, 8, 3, 2, padding="valid", groups=8)
    dw.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 9, 9)
    g = torch.randn(2, 8, 4, 4)
    for a, b in zip(_grads(ref, x, g, True), _grads(dw, x, g, True)):
        assert torch.equal(a, b)
