"""Augmentations for segmentation: image and mask moved together, in batches on tensors.

One affine matrix per sample (flips, in-plane rotation, zoom-in crop) is applied to the
image with bilinear and to the mask with nearest-neighbour resampling on the same grid, so
a label never lands anywhere its pixel did not; outside the image both get zeros (black,
background). Rotations are made in pixel units, so a non-square image is rotated rather
than sheared. Intensity models (`augment.photometric`) then change the image only.
Patch training crops image and mask at the same random offsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import rng
from .augment import Policy, photometric
from .augment_names import COLOUR_ONLY
from .seg_augment_names import INTENSITY, REFUSED, SEGMENTATION, SPATIAL

ZOOM_AREA = (0.5, 1.0)  # random_resized_crop: fraction of the image a view shows
SMALL_ANGLE = math.pi / 18  # small_rotation: up to 10 degrees either way


class AugmentationError(ValueError):
    pass


@dataclass
class SegmentationPolicy:
    spatial: frozenset[str]
    intensity: Policy | None
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, names: list[str], channels: int) -> SegmentationPolicy:
        """Raises AugmentationError for a name segmentation cannot apply; colour models on
        a single channel are skipped (and said so), as for classification."""
        bad = {n: REFUSED.get(n, "not a known augmentation") for n in names
               if n not in SEGMENTATION}
        if bad:
            raise AugmentationError(
                "cannot augment segmentation with " + "; ".join(f"{n} ({why})" for n, why
                                                                 in bad.items())
                + f". Known: {', '.join(sorted(SEGMENTATION))}")
        skipped = {n: "colour augmentation on a single-channel image" for n in names
                   if n in COLOUR_ONLY and channels != 3}
        intensity = {n for n in names if n in INTENSITY and n not in skipped}
        return cls(frozenset(n for n in names if n in SPATIAL),
                   Policy(intensity) if intensity else None, skipped)

    @property
    def active(self) -> bool:
        return bool(self.spatial) or self.intensity is not None


def affine(n: int, size: list[int], ops: frozenset[str], gen: torch.Generator | None,
           device: torch.device) -> torch.Tensor:
    """(n, dims, dims + 1) matrices for `F.affine_grid` (coordinates x = last axis first).

    In-plane rotation acts on the last two axes (height and width, also for volumes)."""
    dims = len(size)
    extent = torch.tensor(size[::-1], dtype=torch.float32, device=device)  # x, y[, z]
    flips = torch.ones(n, dims, device=device)
    if "horizontal_flip" in ops:
        flips[:, 0] = torch.where(rng.rand((n,), gen, device) < 0.5, -1.0, 1.0)
    if "vertical_flip" in ops:
        flips[:, 1] = torch.where(rng.rand((n,), gen, device) < 0.5, -1.0, 1.0)
    angle = torch.zeros(n, device=device)
    if "rotation_90" in ops:
        angle = angle + rng.randint(0, 4, (n,), gen, device) * (math.pi / 2)
    if "rotation_free" in ops:
        angle = angle + (rng.rand((n,), gen, device) * 2 - 1) * math.pi
    if "small_rotation" in ops:
        angle = angle + (rng.rand((n,), gen, device) * 2 - 1) * SMALL_ANGLE
    zoom = torch.ones(n, device=device)
    if "random_resized_crop" in ops:
        area = rng.rand((n,), gen, device) * (ZOOM_AREA[1] - ZOOM_AREA[0]) + ZOOM_AREA[0]
        zoom = area ** (1.0 / dims)
    rotation = torch.eye(dims, device=device).repeat(n, 1, 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation[:, 0, 0], rotation[:, 0, 1] = cos, -sin
    rotation[:, 1, 0], rotation[:, 1, 1] = sin, cos
    # In normalised coordinates: to pixels (x extent), rotate, back; then flip and zoom.
    linear = (rotation * extent[None, None, :]) / extent[None, :, None]
    linear = linear * flips[:, None, :] * zoom[:, None, None]
    shift = (1 - zoom)[:, None] * (rng.rand((n, dims), gen, device) * 2 - 1)
    return torch.cat([linear, shift[:, :, None]], dim=2)


def joint_spatial(images: torch.Tensor, masks: torch.Tensor, ops: frozenset[str],
                  gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """images: float (N, C, *spatial); masks: integer (N, *spatial). Same grid for both."""
    if not ops:
        return images, masks
    theta = affine(len(images), list(images.shape[2:]), ops, gen, images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    labels = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                           align_corners=False)
    return moved, labels[:, 0].round().to(masks.dtype)


def random_crop(images: torch.Tensor, masks: torch.Tensor, patch: list[int],
                gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random window of `patch` (clipped to the image) from image and mask."""
    size = list(images.shape[2:])
    patch = [min(p, s) for p, s in zip(patch, size, strict=True)]
    if patch == size:
        return images, masks
    starts = torch.stack([rng.randint(0, s - p + 1, (len(images),), gen)
                          for p, s in zip(patch, size, strict=True)], 1).tolist()
    windows = [tuple(slice(a, a + p) for a, p in zip(start, patch, strict=True))
               for start in starts]
    return (torch.stack([img[(slice(None), *w)] for img, w in zip(images, windows,
                                                                   strict=True)]),
            torch.stack([m[w] for m, w in zip(masks, windows, strict=True)]))


def augment_pair(images: torch.Tensor, masks: torch.Tensor, policy: SegmentationPolicy,
                 gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One random view of a float batch in [0, 1] and its masks."""
    images, masks = joint_spatial(images, masks, policy.spatial, gen)
    if policy.intensity is not None:
        images = photometric(images, policy.intensity, gen)
    return images, masks
