"""Hybrid objective (review 4.4.1): instance contrast and restoration together, in the
spirit of DiRA [25] and MAEMC-Net [93] (without DiRA's adversarial term)."""

from __future__ import annotations

import torch
from torch import nn

from ..augment import augment
from . import losses
from .base import Decoder, Objective, feature_map, mlp, standardise
from .generative import genesis_corrupt


class ContrastiveRestoration(Objective):
    def __init__(self, encoder: nn.Module, temperature: float = 0.2,
                 restoration_weight: float = 1.0, projection_dim: int = 128):
        super().__init__()
        self.encoder, self.temperature, self.weight = encoder, temperature, restoration_weight
        d = encoder.feature_dim
        dims = encoder.net.conv1.weight.dim() - 2
        self.projector = mlp(d, d, projection_dim)
        self.decoder = Decoder(d, encoder.net.conv1.in_channels, dims)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        v1, v2 = augment(x, policy, gen), augment(x, policy, gen)
        f1 = feature_map(self.encoder, standardise(genesis_corrupt(v1, gen)))
        f2 = feature_map(self.encoder, standardise(v2))
        g1, g2 = (self.projector(f.flatten(2).mean(-1)) for f in (f1, f2))
        restored = self.decoder(f1, list(x.shape[2:]))
        return losses.nt_xent(g1, g2, self.temperature) + self.weight * \
            torch.nn.functional.mse_loss(restored, standardise(v1))
