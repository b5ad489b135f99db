"""Lesion-level inter-slice contrast (review 4.1.3, [44]: Liu et al. 2024, necrotic lung
lesions in CT): neighbouring slices of one lesion crop, and the same lesion at another time
point, are positives; a mask-out shaped by a distance transform imitates a necrotic core,
so the features learn to see a lesion whether or not its centre has died."""

from __future__ import annotations

import torch
from torch import nn

from zoo.architectures import ResNetEncoder

from .. import rng
from ..augment import Policy, geometric, photometric
from . import losses
from .base import Objective, ObjectiveError, mlp, standardise
from .contrastive import group_partners
from .slices import need_volume, partner_slices, slice_at


def centre_distance(size: list[int] | tuple[int, ...], device: torch.device | None = None
                    ) -> torch.Tensor:
    """Distance of every voxel centre to the centre of the crop, each axis scaled so the
    crop spans [-1, 1]: the distance transform of the crop's centre point, so its level
    sets are ellipsoids inscribed in the box (1 touches the faces), whatever the aspect."""
    axes = [(torch.arange(s, device=device, dtype=torch.float32) + 0.5) / s * 2 - 1
            for s in size]
    grid = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grid).pow(2).sum(0).sqrt()


def core_mask(size: list[int] | tuple[int, ...], radius: torch.Tensor) -> torch.Tensor:
    """(B, 1, *size) float mask, 1 on the voxels whose normalised centre distance is below
    each sample's `radius` (B,): the simulated necrotic core. The centre voxel is inside
    for any radius above half a voxel's step, and the core grows with the radius."""
    dist = centre_distance(size, radius.device)
    return (dist[None] < radius.view(-1, *[1] * len(size))).float()[:, None]


def darken_core(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the masked voxels: a necrotic core carries no enhancing tissue, so it reads
    dark on contrast CT and on T1 after gadolinium."""
    return x * (1 - mask.to(x.dtype))


class LesionSliceContrast(Objective):
    """NT-Xent between two neighbouring slabs of one lesion crop (or of the same lesion at
    another time point), other volumes' slabs as negatives, each slab with a necrotic-core
    mask-out.

    The paper crops each lesion to its RECIST box and derives the core from a distance
    transform of the lesion; we have no RECIST boxes or lesion masks, so each training
    volume stands in for the box (the dataset's crop is taken to be lesion-centred) and the
    core is the ball of a random radius in the crop's normalised centre-distance transform.
    Slices go through the 3D encoder as 3-slice slabs (`slices.slice_at`). Anchors are drawn
    from the central half of the depth, where a lesion-centred crop keeps its lesion; the
    partner lies at most `slice_distance` slices away. With `groups` (one id per lesion,
    several time points), a fraction `longitudinal_fraction` of the samples that have
    another member take that member's slab as the positive (the paper's longitudinal
    pairs); other members of a group still count as negatives, as in MICLe. The geometric
    augmentation is drawn once per volume, so the two slabs stay true neighbours; the
    photometric one is drawn per slab."""

    def __init__(self, encoder: nn.Module, temperature: float = 0.1, crop: str = "recist_box",
                 mask_out: str = "distance_transform", slice_distance: int = 2,
                 max_core_radius: float = 0.6, longitudinal_fraction: float = 0.5,
                 projection_dim: int = 128):
        super().__init__()
        if not isinstance(encoder, ResNetEncoder):
            raise ObjectiveError("lesion_slice_contrast needs a convolutional (resnet) encoder")
        if crop != "recist_box":
            raise ObjectiveError(f"crop must be 'recist_box' (the dataset's lesion-centred "
                                 f"crop stands in for it), got '{crop}'")
        if mask_out != "distance_transform":
            raise ObjectiveError(f"mask_out must be 'distance_transform', got '{mask_out}'")
        if temperature <= 0:
            raise ObjectiveError(f"temperature must be positive, got {temperature}")
        if slice_distance < 1:
            raise ObjectiveError(f"slice_distance must be at least 1, got {slice_distance}")
        if not 0 < max_core_radius <= 1:
            raise ObjectiveError(f"max_core_radius must be in (0, 1], got {max_core_radius}")
        if not 0 <= longitudinal_fraction <= 1:
            raise ObjectiveError(f"longitudinal_fraction must be in [0, 1], got "
                                 f"{longitudinal_fraction}")
        self.encoder, self.temperature = encoder, temperature
        self.slice_distance, self.max_core_radius = slice_distance, max_core_radius
        self.longitudinal_fraction = longitudinal_fraction
        self.projector = mlp(encoder.feature_dim, encoder.feature_dim, projection_dim)

    def embed(self, slab: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(standardise(slab)))

    def necrotic(self, slab: torch.Tensor, volume_size: list[int], index: torch.Tensor,
                 gen: torch.Generator | None) -> torch.Tensor:
        """Mask out the cross-section, at slab `index`, of a core of random radius in
        [0, max_core_radius) centred in the whole crop: slabs off the centre see a smaller
        disc, or none, as slices through a real core would."""
        radius = rng.rand((slab.shape[0],), gen, slab.device) * self.max_core_radius
        return darken_core(slab, slice_at(core_mask(volume_size, radius), index))

    def loss(self, x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None,
             groups: torch.Tensor | None = None) -> torch.Tensor:
        need_volume(x, "lesion_slice_contrast")
        depth, n = x.shape[2], x.shape[0]
        if depth < 2:
            raise ObjectiveError("lesion_slice_contrast needs volumes at least 2 slices deep")
        x = geometric(x, policy, gen)
        anchor = rng.randint(depth // 4, depth - depth // 4, (n,), gen, x.device)
        partner = partner_slices(anchor, depth, self.slice_distance, gen)
        source = torch.arange(n, device=x.device)
        if groups is not None:
            other = group_partners(groups.cpu(), gen).to(x.device)
            coin = rng.rand((n,), gen, x.device) < self.longitudinal_fraction
            source = torch.where(coin, other, source)
        size = list(x.shape[2:])
        a = self.necrotic(slice_at(x, anchor), size, anchor, gen)
        b = self.necrotic(slice_at(x[source], partner), size, partner, gen)
        za, zb = self.embed(photometric(a, policy, gen)), self.embed(photometric(b, policy, gen))
        with torch.autocast(x.device.type, enabled=False):
            return losses.nt_xent(za.float(), zb.float(), self.temperature)
