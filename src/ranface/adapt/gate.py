"""The translation gate, paper Eq. 8.

    W = 1 - |D(T_LR(f_HR)) - 0.5|
    f_LR^Translate = W * T_LR(f_HR) + (1 - W) * f_HR

D's LSGAN score near 0.5 means the translated feature is realistic (D cannot tell), so
W -> 1 and the translator's output supplies the LR feature; the more confident D is
(score near 0 or 1), the lower W (down to 0.5) and the more f_HR itself is used.

W is clamped to [0, 1] so f_LR^Translate stays a convex combination even when D's
linear output leaves [-0.5, 1.5] (inside that range the clamp changes nothing).
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["gate_weight", "translation_gate"]


def gate_weight(d_translated: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """W of Eq. 8 from D(T_LR(f_HR)) (shape (N, 1) or (N,)), clamped to [0, 1].

    ``grad=False`` (``adapt.gate_grad``) detaches W: it is a reading of D's confidence,
    not something L_f / L_p may optimise by pushing D's score around.
    """
    w = (1.0 - (d_translated.float() - 0.5).abs()).clamp(0.0, 1.0)
    return w if grad else w.detach()


def translation_gate(t_lr: torch.Tensor, f_hr: torch.Tensor, d_translated: torch.Tensor,
                     grad: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: returns (f_LR^Translate, W) with W of shape (N, 1), one weight per sample.

    ``t_lr`` = T_LR(f_HR) and ``f_hr``: (N, D); ``d_translated`` = D(T_LR(f_HR)): (N, 1).
    """
    if t_lr.shape != f_hr.shape:
        raise ValueError(f"T_LR(f_HR) {tuple(t_lr.shape)} and f_HR {tuple(f_hr.shape)} differ in shape")
    w = gate_weight(d_translated.reshape(-1, 1), grad)
    return w * t_lr + (1.0 - w) * f_hr, w
