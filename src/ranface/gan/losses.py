"""MR-GAN losses (paper §3.3, Eq. 2-6) and the frozen expert network F of Eq. 2.

Paper name -> code name:

* L_perceptual (Eq. 2)         -> :func:`perceptual_loss`, expert F -> :class:`ExpertNetwork`
* L_adv^D, L_adv^G (Eq. 3)     -> :func:`adversarial_d_loss`, :func:`adversarial_g_loss`
* L_pixel (Eq. 4)              -> :func:`pixel_loss`
* L_att (Eq. 5)                -> :func:`attention_loss`
* L_D, L_G (Eq. 6)             -> :func:`discriminator_objective`, :func:`generator_objective`

Reductions (the paper writes norms and sums without saying how they are scaled): every
L1 / squared term is a mean over its elements, so the weights lambda_1..4 = (2, 20, 20,
0.4) do not depend on the face size or the embedding width. Eq. 3 sums the four
discriminators' means (as written); Eq. 2 sums the means of each compared feature.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .regions import CENTER_SIZE_112, attention_target

__all__ = ["ExpertNetwork", "load_expert", "expert_embeddings", "perceptual_loss",
           "adversarial_d_loss", "adversarial_g_loss", "pixel_loss", "attention_loss",
           "generator_objective", "discriminator_objective"]

Features = Union[torch.Tensor, Mapping[str, torch.Tensor]]


# --------------------------------------------------------------------------- expert F
def _channel_slope(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A PReLU slope ``w`` ((C,) or (1,)) shaped to broadcast over x's channel dim 1."""
    return w.view(1, -1, *([1] * (x.dim() - 2))) if x.dim() > 1 and w.numel() > 1 else w


class _FrozenPReLUFn(torch.autograd.Function):
    """prelu(x) with a constant slope ``w``: the gradient goes to x only.

    Backward: dL/dx = g where x > 0, a * g elsewhere, written as t + a * (g - t) with
    t = threshold_backward(g, x, 0): three fast elementwise passes, where
    ``torch.where`` on the mask and ``prelu``'s own backward (which also reduces the
    slope's gradient) are 3-4x slower on CPU (performance.md, issue 16 sixth round).
    Both branches are exact: t + a * 0 = g and 0 + a * g = a * g."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return F.prelu(x, w)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        t = torch.ops.aten.threshold_backward(g, x, 0)
        return torch.addcmul(t, _channel_slope(w, x), g - t), None


class FrozenPReLU(nn.Module):
    """PReLU with a fixed slope: ``prelu``'s values, and a backward pass to the input only
    (:class:`_FrozenPReLUFn`); ``prelu``'s own backward also computes the slope's gradient
    (17% of an MR-GAN step with the MobileFaceNet expert; performance.md). Without a graph
    to build (the expert on x, under ``no_grad``) it is ``prelu`` itself."""

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        self.register_buffer("weight", prelu.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            return _FrozenPReLUFn.apply(x, w)
        return F.prelu(x, w)


def freeze_prelu(module: nn.Module) -> int:
    """Replace every ``nn.PReLU`` under ``module`` by :class:`FrozenPReLU`; returns how many."""
    n = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.PReLU):
            setattr(module, name, FrozenPReLU(child))
            n += 1
        else:
            n += freeze_prelu(child)
    return n


class ExpertNetwork:
    """The pre-trained, frozen expert F of Eq. 2 around any registered backbone.

    Takes faces in [-1, 1] (RGB, any square size) and feeds the backbone what its
    ``.spec`` asks for: pixels 0..255, its channel order, resized to its input size
    (bilinear, antialiased) and normalised with its mean / std, all differentiably, so
    the gradient of F(G(x)) reaches G. The backbone is put in eval mode with
    ``requires_grad=False`` on every parameter; it is deliberately not an ``nn.Module``
    attribute of anything trained (never in a state_dict, an optimizer or DDP).

    The backbone's PReLUs are replaced in place by :class:`FrozenPReLU` (same outputs,
    cheaper backward) and its conv+BN pairs folded (:func:`ranface.models.fuse.fold_conv_bn`), so pass a
    module that nothing else trains.

    ``features(x)`` returns ``{"embedding": (N, D)}`` (L2-normalised when ``normalize``)
    plus ``{"stage<i>": map}`` for each index of ``stages`` into the backbone's
    ``forward_stages()``.
    """

    def __init__(self, backbone: nn.Module, normalize: bool = True, stages: Sequence[int] = (),
                 source: str = "<module>", fold_bn: bool = True, frozen_prelu: bool = True):
        self.backbone = backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        if frozen_prelu:  # False (as fold_bn False): for benchmarks that measure the saving
            freeze_prelu(self.backbone)  # frozen slopes: the cheap backward (same outputs)
        if fold_bn:
            from ..models.fuse import fold_conv_bn

            fold_conv_bn(self.backbone)  # conv+BN as one conv (same function)
        self.normalize = normalize
        self.stages = tuple(int(s) for s in stages)
        self.source = source
        spec = getattr(backbone, "spec", None)
        if spec is None:
            raise ValueError(f"expert {source}: the backbone has no .spec (input size, mean, std)")
        self.spec = spec
        if self.stages and not hasattr(backbone, "forward_stages"):
            raise ValueError(f"expert {source}: perceptual_stages need a backbone with "
                             "forward_stages()")

    def to(self, device: Any) -> "ExpertNetwork":
        self.backbone.to(device)
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] RGB (N, 3, H, W) -> the backbone's normalised input (differentiable)."""
        p = (x.float() + 1.0) * 127.5
        if self.spec.color == "bgr":
            p = p.flip(1)
        size = tuple(self.spec.input_size)
        if tuple(p.shape[-2:]) != size:
            p = F.interpolate(p, size=size, mode="bilinear", align_corners=False, antialias=True)
        mean = torch.tensor(self.spec.mean, dtype=p.dtype, device=p.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, dtype=p.dtype, device=p.device).view(1, 3, 1, 1)
        return (p - mean) / std

    def features(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        self.backbone.eval()  # a caller's .train() on a parent must not unfreeze BN stats
        inp = self.preprocess(x)
        out: Dict[str, torch.Tensor] = {}
        if self.stages:
            maps = self.backbone.forward_stages(inp)
            emb = self.backbone.forward_head(maps[-1])
            for s in self.stages:
                out[f"stage{s}"] = maps[s].float()
        else:
            emb = self.backbone(inp)
        emb = emb.float()
        out["embedding"] = F.normalize(emb, dim=1) if self.normalize else emb
        return out

    __call__ = features


def load_expert(spec: str, backbone: str = "", device: Any = "cpu", normalize: bool = True,
                stages: Sequence[int] = ()) -> ExpertNetwork:
    """An expert from a face-api folder (imported ResNet-29), a ``model.pt``, a training
    checkpoint or a run directory of ``ranface train`` (e.g. the paper's MobileFaceNet);
    loaded frozen through :func:`ranface.models.loader.load_model`."""
    from ..models.loader import load_model

    module, _ = load_model(spec, backbone=backbone, device=device)
    return ExpertNetwork(module, normalize=normalize, stages=stages, source=spec)


@torch.no_grad()
def expert_embeddings(expert: ExpertNetwork, images: torch.Tensor, batch_size: int = 64
                      ) -> torch.Tensor:
    """F(images) for faces in [-1, 1], (N, D) float32 on the CPU, in batches (no grad).
    Normalised as the expert is configured. For realism / identity checks of synthesized
    faces (e.g. cosine of F(x) and F(G(x)))."""
    device = next(expert.backbone.parameters()).device
    out = [expert.features(images[i:i + batch_size].to(device))["embedding"].cpu()
           for i in range(0, images.shape[0], batch_size)]
    if not out:
        return torch.zeros(0, expert.spec.embedding_size)
    return torch.cat(out)


# --------------------------------------------------------------------------- Eq. 2-5
def _as_dict(f: Features) -> Mapping[str, torch.Tensor]:
    return f if isinstance(f, Mapping) else {"embedding": f}


def perceptual_loss(f_x: Features, f_gx: Features) -> torch.Tensor:
    """Eq. 2: L_perceptual = sum || F(x) - F(G(x)) ||_1.

    ``f_x`` = F(x) (the target, computed without grad), ``f_gx`` = F(G(x)); either a
    tensor or a dict of features (embedding and optional intermediate maps). Each
    feature contributes the mean absolute difference over its elements; they are summed.
    """
    a, b = _as_dict(f_x), _as_dict(f_gx)
    if set(a) != set(b):
        raise ValueError(f"perceptual_loss: feature sets differ ({sorted(a)} vs {sorted(b)})")
    return sum((a[k].detach().float() - b[k].float()).abs().mean() for k in sorted(a))


def adversarial_d_loss(d_real: Mapping[str, torch.Tensor], d_fake: Mapping[str, torch.Tensor]
                       ) -> torch.Tensor:
    """Eq. 3 (LSGAN), discriminators' side:
    L_adv^D = sum_k E[(D_k(y) - 1)^2] + sum_k E[D_k(G(x))^2], k over D_1..D_4,
    y real LR faces, G(x) detached fakes; E = mean over the batch and patch scores."""
    if set(d_real) != set(d_fake):
        raise ValueError("adversarial_d_loss: real and fake outputs come from different discriminators")
    return sum(((d_real[k].float() - 1.0) ** 2).mean() + (d_fake[k].float() ** 2).mean()
               for k in sorted(d_real))


def adversarial_g_loss(d_fake: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Eq. 3 (LSGAN), generator's side: L_adv^G = sum_k E[(D_k(G(x)) - 1)^2]."""
    return sum(((d_fake[k].float() - 1.0) ** 2).mean() for k in sorted(d_fake))


def pixel_loss(fake: torch.Tensor, x_r3: torch.Tensor) -> torch.Tensor:
    """Eq. 4: L_pixel = 1 / (W H C) || G(x) - x_r3 ||_1 (mean over the batch too)."""
    return (fake.float() - x_r3.float()).abs().mean()


def attention_loss(G_A: torch.Tensor, center_size: Tuple[int, int] = CENTER_SIZE_112
                   ) -> torch.Tensor:
    """Eq. 5: L_att = || G^A_center - 0 ||_1 + || G^A_edge - 1 ||_1.

    The centre is the ``center_size`` = (width, height) patch (85 x 82 at a 112 face,
    scaled with the face size, :func:`ranface.gan.regions.center_box`), the edge every
    other pixel. Both norms are summed and divided by the number of map elements
    (N x H x W): the mean L1 distance of G^A to a 0-centre / 1-edge target.
    """
    if G_A.dim() != 4 or G_A.shape[1] != 1 or G_A.shape[2] != G_A.shape[3]:
        raise ValueError(f"attention map must be (N, 1, S, S), got {tuple(G_A.shape)}")
    target = attention_target(G_A.shape[-1], tuple(center_size), G_A.device)
    return (G_A.float() - target).abs().mean()


# --------------------------------------------------------------------------- Eq. 6
def discriminator_objective(adv_d: torch.Tensor, lambda_adv: float = 2.0) -> torch.Tensor:
    """Eq. 6, first line: L_D = lambda_1 L_adv^D."""
    return lambda_adv * adv_d


def generator_objective(adv_g: torch.Tensor, perceptual: torch.Tensor, pixel: torch.Tensor,
                        attention: torch.Tensor, lambdas: Sequence[float] = (2.0, 20.0, 20.0, 0.4),
                        use_pixel: bool = True) -> torch.Tensor:
    """Eq. 6, second line: L_G = l1 L_adv^G + l2 L_perceptual + l3 L_pixel + l4 L_att.

    ``use_pixel=False`` drops the pixel critic on the generator iterations where it is not
    applied (§4.2: "Pixel-critic is employed at every 5 generator iterations").
    """
    l1, l2, l3, l4 = (float(v) for v in lambdas)
    total = l1 * adv_g + l2 * perceptual + l4 * attention
    if use_pixel:
        total = total + l3 * pixel
    return total
