"""Losses of the feature adaption network (paper Eq. 7, 9, 10).

Eq. 7 (LSGAN, Mao et al. 2017) with D the feature discriminator:
    L_feature^D = E[(D(f_LR^Real) - 1)^2] + E[D(T_LR(f_HR))^2]   -> :func:`lsgan_d_loss`
    L_feature^G = E[(D(T_LR(f_HR)) - 1)^2]                       -> :func:`lsgan_g_loss`
Eq. 9:
    L_f = || f_LR^Translate/|f_LR^Translate|_2 - f_LR^Real/|f_LR^Real|_2 ||  -> :func:`feature_loss`
    L_p = sum p^Real log(p^Real / p^Translate) = KL(p^Real || p^Translate)  -> :func:`probability_loss`
Eq. 10 (weights alpha, beta, gamma = ``adapt.alpha/beta/gamma``):
    L_c = L_c^HR + alpha L_feature^G + beta L_p + gamma L_f              -> :func:`total_loss`
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["lsgan_d_loss", "lsgan_g_loss", "feature_loss", "kl_divergence", "probability_loss",
           "total_loss", "LF_DISTANCES", "LF_REDUCTIONS"]

LF_DISTANCES = ("l1", "l2")
LF_REDUCTIONS = ("sample", "element")


def lsgan_d_loss(d_real: torch.Tensor, d_translated: torch.Tensor) -> torch.Tensor:
    """L_feature^D of Eq. 7: real scores regressed to 1, translated ones to 0."""
    return ((d_real.float() - 1.0) ** 2).mean() + (d_translated.float() ** 2).mean()


def lsgan_g_loss(d_translated: torch.Tensor) -> torch.Tensor:
    """L_feature^G of Eq. 7: translated scores regressed to 1 (the translator's side)."""
    return ((d_translated.float() - 1.0) ** 2).mean()


def feature_loss(f_translate: torch.Tensor, f_real: torch.Tensor, distance: str = "l2",
                 reduction: str = "sample") -> torch.Tensor:
    """L_f of Eq. 9 between the L2-normalised f_LR^Translate and f_LR^Real.

    ``reduction='sample'`` (default): the norm Eq. 9 writes, per sample, averaged over the
    batch: mean_i ||a_i - b_i||_p with p = 2 (``distance='l2'``) or 1 ('l1').
    ``reduction='element'``: the per-element mean of PyTorch's L1Loss / MSELoss,
    ||a - b||_1 / (N * D) or ||a - b||_2^2 / (N * D) -- about sqrt(D) times smaller for
    unit vectors, so gamma = 10 then leaves L_f far below L_c^HR (issue 11 measured
    gamma L_f ~ 0.5 against L_c^HR ~ 12.7, and 3-4 points of 16/12-px accuracy lost).
    """
    if distance not in LF_DISTANCES:
        raise ConfigError(f"adapt.lf_distance must be one of {', '.join(LF_DISTANCES)}, got {distance!r}")
    if reduction not in LF_REDUCTIONS:
        raise ConfigError(f"adapt.lf_reduction must be one of {', '.join(LF_REDUCTIONS)}, got {reduction!r}")
    a = F.normalize(f_translate.float(), dim=1)
    b = F.normalize(f_real.float(), dim=1)
    diff = a - b
    if reduction == "element":
        return diff.abs().mean() if distance == "l1" else (diff ** 2).mean()
    if distance == "l1":
        return diff.abs().sum(dim=1).mean()
    # sqrt with a floor: the gradient of ||x|| at x = 0 is undefined
    return (diff.pow(2).sum(dim=1) + 1e-12).sqrt().mean()


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) = sum_j p_j (log p_j - log q_j), summed over classes, mean over the batch.

    Arguments are log-probabilities (N, C). The direction matters: p is the target
    distribution (weights of the sum), q the one being fitted.
    """
    p = log_p.exp()
    return (p * (log_p - log_q)).sum(dim=1).mean()


def probability_loss(logits_real: torch.Tensor, logits_translate: torch.Tensor) -> torch.Tensor:
    """L_p of Eq. 9: KL(p^Real || p^Translate), p = softmax of the given class logits.

    p^Real is a fixed target (no gradient: the LR stream is frozen); p^Translate carries
    gradient to f_LR^Translate.
    """
    log_real = F.log_softmax(logits_real.detach().float(), dim=1)
    log_translate = F.log_softmax(logits_translate.float(), dim=1)
    return kl_divergence(log_real, log_translate)


def total_loss(l_c_hr: torch.Tensor, l_feature_g: torch.Tensor, l_p: torch.Tensor, l_f: torch.Tensor,
               alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """L_c of Eq. 10 = L_c^HR + alpha L_feature^G + beta L_p + gamma L_f."""
    return l_c_hr + alpha * l_feature_g + beta * l_p + gamma * l_f
