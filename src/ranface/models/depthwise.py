"""Depthwise convolution whose strided input gradient runs in fp32 under bf16 on the CPU.

oneDNN's backward-data for a *strided* depthwise convolution in bf16 (or fp16) on the
CPU takes 25-50 ms for MobileFaceNet's three stride-2 3x3 layers at batch 16, where the
same gradient in fp32 takes 0.3-2 ms and every other depthwise case (stride 1, the
forward pass, the weight gradient) is as fast in bf16 as in fp32 or faster
(docs/performance.md, "Issue 16, eighth round"). Those three gradients were half of the
frozen MobileFaceNet expert's forward + backward in an MR-GAN step under bf16.

:class:`DepthwiseConv2d` is an ``nn.Conv2d`` (same parameters, state-dict keys and
forward values) whose forward, on the CPU, with a stride above 1, a reduced-precision
compute dtype (the input's, or autocast's) and an input that needs a gradient, goes
through :class:`_FP32InputGrad`: the forward is the same ``conv2d`` in that dtype, the
input gradient is computed in fp32 from the fp32 upcast of the incoming gradient and the
weight and rounded back to the input's dtype, and the weight and bias gradients stay in
the compute dtype. The input gradient equals the slow kernel's bit for bit (it too
accumulates in fp32 and rounds once; tests/test_depthwise.py). Everything else is
``nn.Conv2d.forward`` itself, so fp32 runs, inference and export are unchanged.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DepthwiseConv2d", "slow_reduced_input_grad", "set_fp32_input_grad"]

_REDUCED = (torch.bfloat16, torch.float16)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype ``conv2d`` runs in for input ``x``: autocast's when it is on for x's device."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind) and x.is_floating_point():
        return torch.get_autocast_dtype(kind)
    return x.dtype


def slow_reduced_input_grad(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv``'s input gradient for ``x`` would take oneDNN's slow path: a strided
    depthwise convolution on the CPU in bf16/fp16, with a gradient to compute."""
    # cheapest first: inference (no grad) answers at the first test
    return (x.requires_grad and torch.is_grad_enabled() and max(conv.stride) > 1
            and conv.groups == conv.in_channels > 1 and x.device.type == "cpu"
            and _compute_dtype(x) in _REDUCED)


class _FP32InputGrad(torch.autograd.Function):
    """``conv2d(x, w, b, stride, padding, dilation, groups)`` in x's dtype, with the
    gradient to x computed in fp32 (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                stride: Tuple[int, ...], padding: Tuple[int, ...], dilation: Tuple[int, ...],
                groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.conf = (list(stride), list(padding), list(dilation), groups, b is not None)
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x:  # only the shape and layout of the fp32 input matter for this gradient
            shape_of = torch.empty_like(x, dtype=torch.float32)
            gx = torch.ops.aten.convolution_backward(
                g.float(), shape_of, w.float(), None, stride, padding, dilation, False, [0, 0],
                groups, [True, False, False])[0].to(x.dtype)
        if need_w or (need_b and has_bias):
            _, gw, gb = torch.ops.aten.convolution_backward(
                g, x, w, [w.shape[0]] if has_bias else None, stride, padding, dilation, False,
                [0, 0], groups, [False, bool(need_w), bool(need_b and has_bias)])
        return gx, gw, gb, None, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` for depthwise layers (``groups == in_channels``); identical except
    for the fp32 input gradient of strided layers under bf16/fp16 on the CPU
    (``fp32_input_grad``, on by default; benchmarks turn it off to measure it)."""

    def __init__(self, *args, fp32_input_grad: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fp32_input_grad = fp32_input_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript has no autograd Functions (nor needs them)
            return self._conv_forward(x, self.weight, self.bias)
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        if (not self.fp32_input_grad or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or not slow_reduced_input_grad(self, x)):
            return self._conv_forward(x, self.weight, self.bias)
        dtype = _compute_dtype(x)
        b = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            return _FP32InputGrad.apply(x.to(dtype), self.weight.to(dtype), b, self.stride,
                                        self.padding, self.dilation, self.groups)

def set_fp32_input_grad(module: nn.Module, on: bool) -> int:
    """Turn the fp32 input gradient of every :class:`DepthwiseConv2d` under ``module`` on or
    off; returns how many layers there are."""
    layers = [m for m in module.modules() if isinstance(m, DepthwiseConv2d)]
    for m in layers:
        m.fp32_input_grad = bool(on)
    return len(layers)
