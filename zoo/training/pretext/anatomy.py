"""Anatomy-aware objectives for volumes: Alice-style correspondence contrast with masked
volume modelling (review 4.4.1, [62]) and neighbour-slice displacement (4.2.3, [57])."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.architectures import ResNetEncoder

from .. import rng
from ..augment import Policy, augment, geometric, photometric
from . import losses
from .base import Decoder, Objective, ObjectiveError, feature_map, mlp, standardise

LANDMARK_DETECTORS = ("sam_anatomical", "none")
CROP_SIDE = (0.6, 0.9)  # crop side / volume side; two crops of >= 0.5 always overlap
POINTS_PER_AXIS = 2  # corresponding points per volume: this many per axis of the overlap
MASK_CUBES = 7  # masked cubes per axis (4 voxels at 28)


def spatial_dims(encoder: nn.Module) -> int:
    return int(encoder.monai_kwargs["spatial_dims"])


def draw_crops(n: int, dims: int, gen: torch.Generator | None, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and half-side (n, dims) of one random crop per sample, in grid_sample's
    normalised coordinates and axis order (x = last tensor axis first). Isotropic, and
    always inside the volume, so view coordinate v sits at volume coordinate c + s * v."""
    side = rng.rand((n, 1), gen, device) * (CROP_SIDE[1] - CROP_SIDE[0]) + CROP_SIDE[0]
    side = side.expand(n, dims)
    centre = (1 - side) * (rng.rand((n, dims), gen, device) * 2 - 1)
    return centre, side


def crop(x: torch.Tensor, centre: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Resample each sample's crop to the full input size (one grid_sample)."""
    n, dims = centre.shape
    # fp32 with autocast off: a bf16 grid misplaces voxels by up to a tenth of a voxel at
    # 128, and the correspondences are meant to be exact.
    with torch.autocast(x.device.type, enabled=False):
        theta = torch.zeros(n, dims, dims + 1, device=x.device)
        theta[:, :, :dims] = torch.diag_embed(side.float())
        theta[:, :, dims] = centre.float()
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)


def shared_points(c1: torch.Tensor, s1: torch.Tensor, c2: torch.Tensor, s2: torch.Tensor,
                  gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points inside both crops, as view-1 and view-2 coordinates (n, P, dims): one uniform
    point in each cell of a POINTS_PER_AXIS grid over the crops' intersection, so that the
    points spread over the shared region instead of clustering."""
    n, dims = c1.shape
    lo = torch.maximum(c1 - s1, c2 - s2)
    hi = torch.minimum(c1 + s1, c2 + s2)
    g = POINTS_PER_AXIS
    axes = torch.meshgrid(*[torch.arange(g, device=c1.device)] * dims, indexing="ij")
    cells = torch.stack([a.flatten() for a in axes], 1).to(c1.dtype)  # (P, dims)
    jitter = rng.rand((n, cells.shape[0], dims), gen, c1.device)
    frac = (cells[None] + jitter) / g
    volume = lo[:, None] + frac * (hi - lo)[:, None]
    return (volume - c1[:, None]) / s1[:, None], (volume - c2[:, None]) / s2[:, None]


def sample_points(f: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Features of a map f (B, C, *S) at view coordinates (B, P, dims): (B * P, C),
    interpolated, since a point seldom falls on a cell centre."""
    b, p, dims = points.shape
    # fp32: bf16 coordinates would misplace points by a twentieth of a voxel
    grid = points.view(b, p, *([1] * (dims - 1)), dims).float()
    out = F.grid_sample(f.float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.reshape(b, f.shape[1], p).transpose(1, 2).reshape(b * p, f.shape[1])


def correspondence_nt_xent(f1: torch.Tensor, f2: torch.Tensor, p1: torch.Tensor,
                           p2: torch.Tensor, temperature: float,
                           project: nn.Module | None = None) -> torch.Tensor:
    """Dense InfoNCE over known correspondences: the (projected) feature of view 1 at
    p1[b, k] and of view 2 at p2[b, k], the same voxel of volume b, are positives; every
    other sampled point of either view, in this volume or another, is a negative."""
    project = project or nn.Identity()
    z1, z2 = project(sample_points(f1, p1)), project(sample_points(f2, p2))
    return losses.nt_xent(z1.float(), z2.float(), temperature)


def cube_mask(shape: torch.Size, ratio: float, gen: torch.Generator | None,
              device: torch.device) -> torch.Tensor:
    """(B, 1, *S) with 1 on exactly round(ratio * L) of the L = MASK_CUBES^dims cubes
    per sample (cube sides differ by at most a voxel where S is not a multiple)."""
    b, size = shape[0], list(shape[2:])
    cells = [min(MASK_CUBES, s) for s in size]
    count = math.prod(cells)
    k = min(count, max(0, round(ratio * count)))
    order = torch.argsort(rng.rand((b, count), gen, device), dim=1)
    mask = torch.zeros(b, count, device=device)
    mask.scatter_(1, order[:, :k], 1.0)
    mask = mask.view(b, 1, *cells)
    for axis, (c, s) in enumerate(zip(cells, size, strict=True)):
        index = torch.arange(s, device=device) * c // s  # voxel -> cube along this axis
        mask = mask.index_select(2 + axis, index)
    return mask


class Alice(Objective):
    """Alice (Jiang et al. 2023; the review cites it as [62]): contrast the same anatomy in
    two views while reconstructing masked cubes of the volume.

    The paper finds the same body part in different CT volumes with a pretrained landmark
    detector (SAM) and aligns masked and intact views with an attention module. We have no
    detector, so `landmark_detector` ("sam_anatomical" or "none") is validated but changes
    nothing: correspondences come from geometry we know exactly, two random overlapping crops
    of one volume, whose features at the same voxel are contrasted against all other sampled
    locations (dense InfoNCE). View 1 has `mask_ratio` of its cubes blanked, and a decoder
    rebuilds them from its features, so the masked view must still match the intact one.
    Works on 2D images as on volumes (squares instead of cubes)."""

    def __init__(self, encoder: nn.Module, mask_ratio: float = 0.6,
                 landmark_detector: str = "sam_anatomical", temperature: float = 0.2,
                 reconstruction_weight: float = 1.0, projection_dim: int = 64):
        super().__init__()
        if not isinstance(encoder, ResNetEncoder):
            raise ObjectiveError("alice needs a convolutional (resnet) encoder: it contrasts "
                                 "and decodes the last feature map")
        if landmark_detector not in LANDMARK_DETECTORS:
            raise ObjectiveError(f"landmark_detector must be one of {list(LANDMARK_DETECTORS)} "
                                 f"(known crop correspondence replaces it), got "
                                 f"{landmark_detector!r}")
        if not 0 <= mask_ratio < 1:
            raise ObjectiveError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.encoder, self.mask_ratio, self.temperature = encoder, mask_ratio, temperature
        self.landmark_detector, self.weight = landmark_detector, reconstruction_weight
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim)
        self.decoder = Decoder(d, encoder.net.conv1.in_channels, spatial_dims(encoder))

    def terms(self, x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The correspondence contrast and the masked reconstruction error, apart."""
        n, dims = x.shape[0], x.dim() - 2
        # The policy's geometry is shared by both views, so correspondences stay exact.
        base = geometric(x, policy, gen)
        c1, s1 = draw_crops(n, dims, gen, x.device)
        c2, s2 = draw_crops(n, dims, gen, x.device)
        v1 = standardise(photometric(crop(base, c1, s1), policy, gen))
        v2 = standardise(photometric(crop(base, c2, s2), policy, gen))
        mask = cube_mask(v1.shape, self.mask_ratio, gen, x.device)
        f1 = feature_map(self.encoder, v1 * (1 - mask))  # blank = mid-grey
        f2 = feature_map(self.encoder, v2)
        p1, p2 = shared_points(c1, s1, c2, s2, gen)
        contrast = correspondence_nt_xent(f1, f2, p1, p2, self.temperature, self.projector)
        restored = self.decoder(f1, list(v1.shape[2:])).float()
        return contrast, losses.masked_pixel_mse(restored, v1.float(), mask)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        contrast, rebuild = self.terms(x, policy, gen)
        return contrast + self.weight * rebuild


def displace_patches(x: torch.Tensor, slices: torch.Tensor, shift: torch.Tensor,
                     corner: torch.Tensor, patch: int) -> torch.Tensor:
    """Copy of volumes x (B, C, D, H, W) in which the patch×patch square at `corner`
    (B, 2: row, column) of slice `slices` (B,) holds the same square of slice
    slices + shift. Source slices must lie inside the volume."""
    b, _, depth, height, width = x.shape
    batch = torch.arange(b, device=x.device)
    source = x[batch, :, slices + shift]  # (B, C, H, W)
    rows = torch.arange(height, device=x.device)[None]
    cols = torch.arange(width, device=x.device)[None]
    in_rows = (rows >= corner[:, :1]) & (rows < corner[:, :1] + patch)
    in_cols = (cols >= corner[:, 1:]) & (cols < corner[:, 1:] + patch)
    at_slice = torch.arange(depth, device=x.device)[None] == slices[:, None]
    where = at_slice[:, :, None, None] & in_rows[:, None, :, None] & in_cols[:, None, None, :]
    return torch.where(where[:, None], source[:, :, None], x)


class SpatialAwareness(Objective):
    """Neighbour-slice displacement (Nguyen et al. 2020, review [57]): a square patch of
    one slice is replaced by the same square from the slice d away along depth, and a
    linear head on the encoder's pooled features classifies d in [-max_displacement,
    max_displacement] (d = 0 leaves the volume intact). Seeing the misfit needs a sense of
    how anatomy continues between slices. The slice is drawn given d so that slice + d lies
    in the volume: clamping the source instead would give an edge patch a label that is
    not its real displacement. `patch_size` is clipped to the slice. Volumes only. It learns
    slowly, as one displaced slice is a small part of a volume: on 28^3 AdrenalMNIST3D the
    loss left chance only after some 7000 corrupted volumes."""

    def __init__(self, encoder: nn.Module, max_displacement: int = 4, patch_size: int = 32):
        super().__init__()
        if spatial_dims(encoder) != 3:
            raise ObjectiveError("spatial_awareness is 3D only: it moves patches between "
                                 "slices of a volume, which a 2D image does not have")
        if max_displacement < 1 or patch_size < 1:
            raise ObjectiveError("max_displacement and patch_size must be at least 1")
        self.encoder, self.max_displacement, self.patch_size = (encoder, int(max_displacement),
                                                                 int(patch_size))
        self.head = nn.Linear(encoder.feature_dim, 2 * self.max_displacement + 1)

    def corrupt(self, x: torch.Tensor, gen: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The corrupted volumes and their displacements d (B,)."""
        if x.dim() != 5:
            raise ObjectiveError("spatial_awareness needs volumes (B, C, D, H, W), got "
                                 f"shape {tuple(x.shape)}")
        b, _, depth, height, width = x.shape
        reach = min(self.max_displacement, depth - 1)
        patch = min(self.patch_size, height, width)
        shift = rng.randint(-reach, reach + 1, (b,), gen, x.device)
        lo, hi = (-shift).clamp(min=0), depth - 1 - shift.clamp(min=0)  # slice + d in range
        slices = torch.minimum(lo + (rng.rand((b,), gen, x.device) * (hi - lo + 1)).long(), hi)
        room = torch.tensor([height - patch + 1, width - patch + 1], device=x.device)
        corner = (rng.rand((b, 2), gen, x.device) * room).long()
        return displace_patches(x, slices, shift, corner, patch), shift

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        corrupted, shift = self.corrupt(augment(x, policy, gen), gen)
        logits = self.head(self.encoder(standardise(corrupted))).float()
        return F.cross_entropy(logits, shift + self.max_displacement)
