"""Feature adaption network, the MR stage (paper §3.4, Fig. 4, Eq. 7-10).

- :mod:`.translator`: T_LR (BN-ReLU-FC-BN-ReLU-FC)
- :mod:`.discriminator`: the feature discriminator D (LSGAN)
- :mod:`.gate`: the translation gate W and f_LR^Translate (Eq. 8)
- :mod:`.losses`: L_feature^D / L_feature^G (Eq. 7), L_f and L_p (Eq. 9), L_c (Eq. 10)
- :mod:`.trainer`: the two phases and the ``train --stage mr`` recipe (:func:`run_adaption`)
"""
from .discriminator import FeatureDiscriminator
from .gate import gate_weight, translation_gate
from .losses import feature_loss, kl_divergence, lsgan_d_loss, lsgan_g_loss, probability_loss, total_loss
from .trainer import AdaptionLoss, DiscriminatorLoss, run_adaption
from .translator import Translator

__all__ = ["Translator", "FeatureDiscriminator", "gate_weight", "translation_gate", "lsgan_d_loss",
           "lsgan_g_loss", "feature_loss", "kl_divergence", "probability_loss", "total_loss",
           "AdaptionLoss", "DiscriminatorLoss", "run_adaption"]
