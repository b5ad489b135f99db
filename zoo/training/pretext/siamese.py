"""Patient-level Siamese contrast: scans of one patient are pulled together and other
patients' pushed apart by a margin, as the longitudinal and left/right-eye studies the
review cites do ([34, 56, 41])."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import augment
from . import losses
from .base import Objective, ObjectiveError, mlp, standardise
from .contrastive import group_partners

PAIR_SAMPLING = ("same_patient_longitudinal",)


def siamese_pairs(n: int, groups: torch.Tensor | None, gen: torch.Generator | None,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's partner index, and which (sample i, partner of j) pairs share a group.
    Without groups the partner is the sample itself and only the diagonal is positive."""
    if groups is None:
        return (torch.arange(n, device=device),
                torch.eye(n, dtype=torch.bool, device=device))
    partner = group_partners(groups.cpu(), gen).to(device)
    groups = groups.to(device)
    return partner, groups[:, None] == groups[partner][None, :]


class PatientSiamese(Objective):
    """Pairs come from the grouping key the dataset gives (patient, lesion or sequence id):
    the paper's longitudinal visits of one patient are what such a key groups when the
    data has them. Without groups each image is paired with a second augmentation of
    itself, which makes this an instance-level Siamese contrast; the catalog entry lists
    `patient_ids` among its needs, so the engine says so too."""

    needs_groups = True

    def __init__(self, encoder: nn.Module, margin: float = 1.0,
                 pair_sampling: str = "same_patient_longitudinal", projection_dim: int = 128):
        super().__init__()
        if pair_sampling not in PAIR_SAMPLING:
            raise ObjectiveError(f"pair_sampling must be one of {', '.join(PAIR_SAMPLING)}, "
                                 f"got '{pair_sampling}'")
        if margin <= 0:
            raise ObjectiveError(f"margin must be positive, got {margin}")
        self.encoder, self.margin = encoder, margin
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        # On the unit sphere distances lie in [0, 2], so the catalog's margin of 1 is a
        # meaningful fraction of the range whatever the encoder's scale.
        return F.normalize(self.projector(self.encoder(standardise(x))).float(), dim=1)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        partner, same = siamese_pairs(x.shape[0], groups, gen, x.device)
        za = self.embed(augment(x, policy, gen))
        zb = self.embed(augment(x[partner], policy, gen))
        return losses.margin_contrastive(za, zb, same, self.margin)
