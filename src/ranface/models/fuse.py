"""Folding affine layers into the convolution before them, for inference.

A convolution followed by an eval-mode BatchNorm (or dlib's per-channel affine ``Scale``)
is one convolution with rescaled weights and a bias: the same function up to float
rounding (embeddings within ~3e-7 here), one pass over the activations fewer. On a CPU
that pass is memory-bound, and the folded ResNet-29 also gains from channels_last
(docs/performance.md, "Evaluation throughput").

Only for a network that no longer trains: a folded BN no longer follows its running
statistics and a folded layer has no gradient of its own. :func:`fuse_for_inference`
works on the module it is given; callers that must keep the original pass a copy
(:class:`ranface.inference.Embedder` does).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["fold_conv_bn", "fold_into_conv", "fuse_for_inference"]


def fold_into_conv(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """In place: ``conv`` becomes ``conv(x) * scale + shift`` per output channel."""
    with torch.no_grad():
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        new_bias = bias * scale + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(new_bias)


def fold_bn(conv: nn.Module, bn: nn.Module) -> bool:
    """Fold ``bn`` into ``conv`` (in place) when they are a Conv2d and a BatchNorm2d with
    running statistics; returns whether it did (the caller replaces ``bn`` by Identity).
    The arithmetic is torch's ``fuse_conv_bn_weights`` (so folded experts of earlier runs
    reproduce bit for bit)."""
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features):
        return False
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    with torch.no_grad():
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                    bn.eps, bn.weight, bn.bias)
    conv.weight, conv.bias = w, b
    return True


def fold_conv_bn(module: nn.Module) -> int:
    """Fold each ``BatchNorm2d`` that directly follows a ``Conv2d`` inside an
    ``nn.Sequential`` under ``module`` (eval-mode statistics; the BN becomes Identity).
    Returns how many were folded. The MR-GAN's frozen expert uses this rule alone
    (:class:`ranface.gan.losses.ExpertNetwork`)."""
    n = 0
    for child in module.children():
        n += _fold_sequential(child) + fold_conv_bn(child)
    return n


def _fold_sequential(module: nn.Module) -> int:
    """The conv+BN pairs directly inside ``module`` when it is an ``nn.Sequential``."""
    n = 0
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            if fold_bn(module[i], module[i + 1]):
                module[i + 1] = nn.Identity()
                n += 1
    return n


def fuse_for_inference(module: nn.Module, _top: bool = True) -> int:
    """Fold every affine layer that directly follows a convolution, in place: the
    ``nn.Sequential`` conv+BN pairs (:func:`fold_conv_bn`) and the pairs a module names
    itself through a ``fold_affine()`` method (ResNet-29's conv+scale, IResNet's
    conv+BN). Puts ``module`` in eval mode. Returns how many were folded."""
    if _top:
        module.eval()
    n = 0
    own = getattr(module, "fold_affine", None)
    if callable(own):
        n += int(own())
    n += _fold_sequential(module)
    for child in module.children():
        n += fuse_for_inference(child, _top=False)
    return n
