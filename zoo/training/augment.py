"""Batched, modality-aware augmentations on tensors (CPU or GPU).

All geometric operations of one view (random resized crop, flips, rotations) are folded
into one affine matrix per sample and applied with a single `grid_sample`; intensity and
noise models are elementwise. The policy comes from a recommendation: augmentations it
says to avoid (rotations on orientation-sensitive anatomy, colour on grayscale) are never
applied, and modality noise models (Rician for MRI, speckle for ultrasound, stain jitter
for pathology) are added when it advises them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from . import rng
from .augment_names import COLOUR_ONLY, KNOWN


@dataclass
class Policy:
    ops: set[str]
    crop_scale: tuple[float, float] = (0.3, 1.0)
    skipped: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, use: list[str], avoid: list[str], channels: int,
              crop_scale: tuple[float, float] | list[float] = (0.3, 1.0)) -> Policy:
        ops, skipped = set(), {}
        for name in use:
            if name in avoid:
                skipped[name] = "advised against by the recommendation"
            elif name not in KNOWN:
                skipped[name] = "not implemented on tensors (e.g. temporal or k-space)"
            elif name in COLOUR_ONLY and channels != 3:
                skipped[name] = "colour augmentation on a single-channel image"
            else:
                ops.add(name)
        return cls(ops, (float(crop_scale[0]), float(crop_scale[1])), skipped)


def _uniform(n: int, lo: float, hi: float, device: torch.device,
             gen: torch.Generator | None) -> torch.Tensor:
    return rng.rand((n,), gen, device) * (hi - lo) + lo


def _coin(n: int, p: float, device: torch.device, gen: torch.Generator | None) -> torch.Tensor:
    return rng.rand((n,), gen, device) < p


def geometric(x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None
              ) -> torch.Tensor:
    """Crop, flips and rotations of every sample in one resampling."""
    n, dims, dev = x.shape[0], x.dim() - 2, x.device
    scale = torch.ones(n, dims, device=dev)
    if "random_resized_crop" in policy.ops:
        area = _uniform(n, *policy.crop_scale, dev, gen)
        side = area ** (1.0 / dims)
        if dims == 2:
            log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), dev, gen)
            ratio = torch.exp(log_ratio)
            scale = torch.stack([side * ratio.sqrt(), side / ratio.sqrt()], 1).clamp(max=1.0)
        else:
            scale = side[:, None].expand(n, dims).clone()
    flips = torch.ones(n, dims, device=dev)
    if "horizontal_flip" in policy.ops:
        flips[:, 0] = torch.where(_coin(n, 0.5, dev, gen), -1.0, 1.0)
    if "vertical_flip" in policy.ops:
        flips[:, 1] = torch.where(_coin(n, 0.5, dev, gen), -1.0, 1.0)
    angle = torch.zeros(n, device=dev)
    if "rotation_90" in policy.ops:
        angle = angle + rng.randint(0, 4, (n,), gen, dev) * (math.pi / 2)
    if "rotation_free" in policy.ops:
        angle = angle + _uniform(n, -math.pi, math.pi, dev, gen)
    if "small_rotation" in policy.ops:
        angle = angle + _uniform(n, -math.pi / 18, math.pi / 18, dev, gen)
    shift = (1 - scale) * (rng.rand((n, dims), gen, dev) * 2 - 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, dims, dims + 1, device=dev)
    s = scale * flips
    # rotation acts in the first two spatial axes (in-plane for volumes)
    theta[:, 0, 0], theta[:, 0, 1] = cos * s[:, 0], -sin * s[:, 1]
    theta[:, 1, 0], theta[:, 1, 1] = sin * s[:, 0], cos * s[:, 1]
    if dims == 3:
        theta[:, 2, 2] = s[:, 2]
    theta[:, :, dims] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def _per_sample(n: int, dims: int, values: torch.Tensor) -> torch.Tensor:
    return values.view(n, *([1] * (dims + 1)))


def photometric(x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None
                ) -> torch.Tensor:
    """Intensity, colour and noise models on images scaled to [0, 1]."""
    n, dims, dev, ops = x.shape[0], x.dim() - 2, x.device, policy.ops

    def ps(values: torch.Tensor) -> torch.Tensor:
        return _per_sample(n, dims, values)

    if "intensity_shift" in ops:
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        contrast = ps(_uniform(n, 0.75, 1.25, dev, gen))
        bright = ps(_uniform(n, -0.1, 0.1, dev, gen))
        x = (x - mean) * contrast + mean + bright
    if "color_jitter" in ops:
        gray = x.mean(1, keepdim=True)
        sat = ps(_uniform(n, 0.6, 1.4, dev, gen))
        x = gray + (x - gray) * sat
        x = x * (1 + 0.1 * (rng.rand((n, 3, *([1] * dims)), gen, dev) - 0.5))
    if "stain_jitter" in ops:
        od = -torch.log(x.clamp(1e-3, 1.0))  # optical density: stains add linearly here
        a = 1 + 0.1 * (rng.rand((n, 3, *([1] * dims)), gen, dev) * 2 - 1)
        b = 0.05 * (rng.rand((n, 3, *([1] * dims)), gen, dev) * 2 - 1)
        x = torch.exp(-(od * a + b))
    if "random_grayscale" in ops:
        gray = x.mean(1, keepdim=True).expand_as(x)
        x = torch.where(ps(_coin(n, 0.2, dev, gen).float()) > 0, gray, x)
    if "gamma" in ops:
        x = x.clamp(0, 1) ** ps(torch.exp(_uniform(n, -0.3, 0.3, dev, gen)))
    if "gaussian_blur" in ops and float(rng.rand((), gen)) < 0.5:
        sigma = float(_uniform(1, 0.1, 1.0, dev, gen))
        radius = 2
        k = torch.exp(-torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype) ** 2
                      / (2 * sigma**2))
        k = k / k.sum()
        c = x.shape[1]
        for axis in range(dims):
            shape = [1] * dims
            shape[axis] = k.numel()
            weight = k.view(1, 1, *shape).repeat(c, 1, *([1] * dims))
            pad = [0] * (2 * dims)
            pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = radius
            conv = F.conv2d if dims == 2 else F.conv3d
            x = conv(F.pad(x, pad, mode="reflect"), weight, groups=c)
    sigma = ps(_uniform(n, 0.0, 0.05, dev, gen))
    if "gaussian_noise" in ops:
        x = x + sigma * rng.randn(x.shape, gen, dev)
    if "rician_noise" in ops:
        real = x + sigma * rng.randn(x.shape, gen, dev)
        imag = sigma * rng.randn(x.shape, gen, dev)
        x = torch.sqrt(real**2 + imag**2)
    if "speckle_noise" in ops:
        x = x * (1 + 2 * sigma * rng.randn(x.shape, gen, dev))
    if "poisson_noise" in ops:
        peak = ps(_uniform(n, 50.0, 255.0, dev, gen))
        x = rng.poisson(x.clamp(min=0) * peak, gen) / peak
    if "solarize" in ops:
        x = torch.where(ps(_coin(n, 0.2, dev, gen).float()) > 0,
                        torch.where(x > 0.5, 1 - x, x), x)
    if "random_erasing" in ops:
        size = x.shape[2:]
        mask = torch.ones_like(x[:, :1])
        for i in torch.nonzero(_coin(n, 0.25, dev, gen)).flatten().tolist():
            lo = [int(rng.randint(0, max(1, s // 2), (1,), gen)) for s in size]
            sl = tuple(slice(a, a + max(1, s // 4)) for a, s in zip(lo, size, strict=True))
            mask[(i, 0, *sl)] = 0
        x = x * mask
    return x.clamp(0.0, 1.0)


def augment(x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None
            ) -> torch.Tensor:
    """One random view of a float batch in [0, 1]."""
    return photometric(geometric(x, policy, gen), policy, gen)
