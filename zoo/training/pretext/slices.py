"""Slice-relation objectives for volumes (review 4.2.3 and 4.4): which of two slices lies
further along the depth axis [slice ordering], and SSMTL's pair of tasks, restoring a slice
at a fixed distance from an anchor while a Siamese branch matches slices of one scan.

Slices go through the 3D encoder as thin slabs (B, C, 3, H, W): the MONAI ResNet is
size-agnostic, so the encoder that is stored is the one fine-tuning later sees, not a 2D
stand-in. Both take depth as the body's long axis, as the 3D sets here store it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from ..augment import augment
from . import losses
from .base import Decoder, Objective, ObjectiveError, feature_map, mlp, standardise


def need_volume(x: torch.Tensor, method: str) -> None:
    if x.dim() != 5:
        raise ObjectiveError(f"{method} needs volumes (B, C, D, H, W); got a {x.dim() - 2}D "
                             "batch")


def slice_at(x: torch.Tensor, index: torch.Tensor, half: int = 1) -> torch.Tensor:
    """The slab of 2 * half + 1 slices centred on slice `index[b]` of volume b (indices
    clamped at the ends), as a thin volume (B, C, 2 * half + 1, H, W). A slab rather than a
    single slice: CPU bf16 3D convolution returned NaN now and then on one-slice inputs
    (torch 2.13), and three slices are what a radiologist scrolls through anyway."""
    offsets = torch.arange(-half, half + 1, device=x.device)
    depth = (index[:, None] + offsets).clamp(0, x.shape[2] - 1)  # (B, T)
    batch = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[batch, :, depth].permute(0, 2, 1, 3, 4).contiguous()


def partner_slices(index: torch.Tensor, depth: int, max_distance: int,
                   gen: torch.Generator | None) -> torch.Tensor:
    """For each slice index, another index at most `max_distance` away, uniform over the
    slices that exist on either side (so slices near an end are not biased inwards more
    than the volume forces)."""
    lo = (index - max_distance).clamp(min=0)
    hi = (index + max_distance).clamp(max=depth - 1)
    count = hi - lo  # the candidates in [lo, hi] other than index itself
    pick = (rng.rand(index.shape, gen, index.device) * count).long().clamp(max=count - 1)
    other = lo + pick
    return other + (other >= index).long()


class SliceOrdering(Objective):
    """Predict whether the second of two slices of one volume lies further along the depth
    axis than the first (the catalog's slice-ordering entry): the answer is the body's
    cranio-caudal layout, which a segmentation of organs needs."""

    def __init__(self, encoder: nn.Module, max_slice_distance: int = 16,
                 pair_sampling: str = "random_pairs"):
        super().__init__()
        if pair_sampling != "random_pairs":
            raise ObjectiveError(f"pair_sampling must be 'random_pairs', got '{pair_sampling}'")
        if max_slice_distance < 1:
            raise ObjectiveError(f"max_slice_distance must be at least 1, got "
                                 f"{max_slice_distance}")
        self.encoder, self.max_distance = encoder, max_slice_distance
        d = encoder.feature_dim
        self.head = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(inplace=True), nn.Linear(d, 1))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        need_volume(x, "slice_ordering")
        x = augment(x, policy, gen)
        depth = x.shape[2]
        if depth < 2:
            raise ObjectiveError("slice_ordering needs volumes at least 2 slices deep")
        first = rng.randint(0, depth, (x.shape[0],), gen, x.device)
        second = partner_slices(first, depth, self.max_distance, gen)
        h1 = self.encoder(standardise(slice_at(x, first)))
        h2 = self.encoder(standardise(slice_at(x, second)))
        logits = self.head(torch.cat([h1, h2], 1)).squeeze(1).float()
        return F.binary_cross_entropy_with_logits(logits, (second > first).float())


class SSMTL(Objective):
    """Self-supervised multi-task learning on slices (review [19]):
    restore the slice `slice_distance` further along depth from an anchor slice, and pull
    together the projections of the two slices of one scan against other scans' slices
    (cosine similarity inside NT-Xent, so the Siamese branch cannot collapse)."""

    def __init__(self, encoder: nn.Module, slice_distance: int = 2, similarity: str = "cosine",
                 temperature: float = 0.2, projection_dim: int = 128):
        super().__init__()
        if similarity != "cosine":
            raise ObjectiveError(f"similarity must be 'cosine', got '{similarity}'")
        if slice_distance < 1:
            raise ObjectiveError(f"slice_distance must be at least 1, got {slice_distance}")
        self.encoder, self.distance, self.temperature = encoder, slice_distance, temperature
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim)
        self.decoder = Decoder(d, encoder.net.conv1.in_channels, 3)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        need_volume(x, "ssmtl")
        x = augment(x, policy, gen)
        depth = x.shape[2]
        if depth <= self.distance:
            raise ObjectiveError(f"ssmtl with slice_distance {self.distance} needs volumes "
                                 f"deeper than {self.distance} slices; got {depth}")
        anchor = rng.randint(0, depth - self.distance, (x.shape[0],), gen, x.device)
        a, b = slice_at(x, anchor), slice_at(x, anchor + self.distance)
        fa = feature_map(self.encoder, standardise(a))
        restored = self.decoder(fa, list(b.shape[2:]))
        hb = self.encoder(standardise(b))
        match = losses.nt_xent(self.projector(fa.flatten(2).mean(-1)), self.projector(hb),
                               self.temperature)
        return F.mse_loss(restored.float(), standardise(b).float()) + match
