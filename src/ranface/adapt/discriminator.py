"""The feature discriminator D of the feature adaption network (paper §3.4, Eq. 7-8).

D tells realistic LR embeddings f_LR^Real (the frozen LR model on the synthesized LR
twin) from translated ones T_LR(f_HR). It is an MLP with a linear output: LSGAN
(Eq. 7) regresses real to 1 and translated to 0, so D ~ 0.5 means "cannot tell", which
is what the translation gate (Eq. 8) reads as confidence.

No normalisation layers: D's score of one sample must not depend on the rest of the
batch, because the gate weighs each sample by its own score.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["FeatureDiscriminator"]


class FeatureDiscriminator(nn.Module):
    """D: (N, D) embeddings -> (N, 1) scores (LSGAN: real -> 1, translated -> 0).

    ``hidden``: width of the two hidden layers (LeakyReLU 0.2, as GAN discriminators use).
    """

    def __init__(self, embedding_size: int, hidden: int = 256, depth: int = 2, spectral_norm: bool = True):
        super().__init__()
        if embedding_size < 1 or hidden < 1 or depth < 1:
            raise ConfigError(f"feature discriminator needs positive sizes, got embedding_size="
                              f"{embedding_size}, adapt.disc_hidden={hidden}")
        layers: List[nn.Module] = []
        width = embedding_size
        # Spectral normalisation (Miyato et al. 2018) makes D 1-Lipschitz: |D(a) - D(b)| <=
        # ||a - b|| for unit features, so D cannot saturate (issue 11 saw d_real 0.99 against
        # d_translated 0.008, W stuck at 0.5) unless the two feature sets really lie far apart.
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        for _ in range(depth):
            layers += [wrap(nn.Linear(width, hidden)), nn.LeakyReLU(0.2)]
            width = hidden
        layers.append(wrap(nn.Linear(width, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def score_frozen(self, features: torch.Tensor) -> torch.Tensor:
        """D(features) with D's parameters held constant: gradient reaches ``features``
        (the translator, for L_feature^G and a gradient-carrying gate) but never D's own
        parameters, which only the discriminator phase (L_feature^D) trains."""
        x = features
        for layer in self.net:  # the same layers on detached weights
            if isinstance(layer, nn.Linear):
                # (with spectral norm, .weight is the normalised weight; reading it in eval
                # mode does not advance the power iteration)
                x = F.linear(x, self._weight(layer).detach(), layer.bias.detach())
            else:
                x = layer(x)
        return x

    @staticmethod
    def _weight(layer: nn.Linear) -> torch.Tensor:
        from torch.nn.utils import parametrize

        if parametrize.is_parametrized(layer, "weight"):
            was = layer.training
            layer.eval()  # no power-iteration update outside D's own phase
            try:
                return layer.weight
            finally:
                layer.train(was)
        return layer.weight
