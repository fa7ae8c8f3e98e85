"""The translator T_LR of the translation gate (paper §3.4, Fig. 4).

T_LR maps the MR backbone's HR embedding f_HR to a translated LR embedding
T_LR(f_HR). The paper: "two batch normalization, ReLU and fully connected layers in
sequence", i.e. BN-ReLU-FC-BN-ReLU-FC. It is used only during the MR stage; the
deployed embedding is f_HR itself.
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError

__all__ = ["Translator"]


class Translator(nn.Sequential):
    """T_LR: (N, D) f_HR -> (N, D) T_LR(f_HR) through BN-ReLU-FC-BN-ReLU-FC.

    ``hidden`` is the width of the middle layer (0: ``embedding_size``).
    """

    def __init__(self, embedding_size: int, hidden: int = 0):
        hidden = hidden or embedding_size
        if embedding_size < 1 or hidden < 1:
            raise ConfigError(f"translator needs positive sizes, got embedding_size={embedding_size}, "
                              f"adapt.translator_hidden={hidden}")
        super().__init__(
            nn.BatchNorm1d(embedding_size), nn.ReLU(inplace=False), nn.Linear(embedding_size, hidden),
            nn.BatchNorm1d(hidden), nn.ReLU(inplace=False), nn.Linear(hidden, embedding_size))
        self.embedding_size = embedding_size
        self.hidden = hidden
