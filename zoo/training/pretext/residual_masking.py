"""Residual cuboid masking (Tahghighi et al. 2024, review [69]): blur cuboids placed at the
brain surface into a 3D MRI volume and predict the voxel-wise residual heatmap, a pretext
aimed at small (multiple sclerosis) lesions, which look like local, blurry intensity
changes that a segmenter must find and outline."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.architectures import ResNetEncoder

from .. import rng
from ..augment import augment
from . import losses
from .base import Objective, ObjectiveError, standardise
from .sparse_masking import HierarchicalDecoder, _width

BLENDS = ("blurred",)
FOREGROUND_LEVEL = 0.1  # share of a volume's (smoothed) intensity range that is "brain"
BLUR_SIGMA = 1 / 16  # of the smallest side (at least one voxel): 3 voxels at 48
MAX_ROUNDS = 512  # each round covers new foreground in every volume short of the ratio


def gaussian_blur3d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable 3D Gaussian blur of (B, C, D, H, W) in fp32, kernel radius ceil(2.5 sigma),
    replicated borders and a kernel summing to one, so a constant volume stays constant."""
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-t**2 / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    out = x.float()
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = k.numel()
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"),
                       k.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return out


def foreground(x: torch.Tensor, level: float = FOREGROUND_LEVEL) -> torch.Tensor:
    """(B, 1, *S) bool: voxels whose lightly smoothed mean intensity lies above `level` of
    the volume's range (smoothing first keeps Rician background noise out; it grows the mask
    by about a voxel, which keeps dark rims such as CSF in). A constant volume has none."""
    s = gaussian_blur3d(x.float().mean(1, keepdim=True), 1.0)
    lo = s.amin(dim=(2, 3, 4), keepdim=True)
    hi = s.amax(dim=(2, 3, 4), keepdim=True)
    return (s > lo + level * (hi - lo)) & (hi > lo)


def surface_band(fg: torch.Tensor, width: int) -> torch.Tensor:
    """Foreground voxels with a background voxel within `width` voxels (Chebyshev distance),
    by max-pooling the background; outside the field of view counts as background."""
    near = F.pad((~fg).float(), [width] * 6, value=1.0)
    for axis in range(3):  # a cube max-pool as three 1D ones: same result, far cheaper
        kernel = [1, 1, 1]
        kernel[axis] = 2 * width + 1
        near = F.max_pool3d(near, kernel, stride=1)
    return fg & (near > 0)


def _taper(size: int, start: torch.Tensor, side: torch.Tensor, ramp: int) -> torch.Tensor:
    """Blending weight along one axis, (..., size): 0 outside [start, start + side), rising
    linearly over `ramp` voxels from each face to 1 inside. start, side: (...)."""
    pos = torch.arange(size, device=start.device)
    edge = torch.minimum(pos - start[..., None] + 1, (start + side)[..., None] - pos).float()
    return (edge / (ramp + 1)).clamp(0.0, 1.0)


def place_cuboids(fg: torch.Tensor, band: torch.Tensor, ratio: float,
                  gen: torch.Generator | None, ramp: int = 1) -> torch.Tensor:
    """(B, 1, D, H, W) blending weights in [0, 1], > 0 exactly inside the cuboids.

    Cuboids are added until they cover `ratio` of each volume's foreground, overshooting by
    less than one cuboid. Each is centred on a voxel drawn uniformly from the still
    uncovered part of the surface band (from the uncovered foreground once the band is used
    up), so it always covers new foreground; sides are drawn per axis between 1/8 and 1/4
    of the volume's side (at least 2), and a cuboid is shifted, never cut, to fit in the
    volume (it still holds its centre). For speed a round adds several cuboids to a volume,
    but never more than could fill what is still missing (the floor of the missing voxels
    over the largest cuboid's volume, at least one), so the bound on the overshoot holds."""
    b, size, dev = fg.shape[0], list(fg.shape[2:]), fg.device
    fgf, bandf = fg.flatten(1), band.flatten(1)
    grid = torch.meshgrid(*[torch.arange(s, device=dev) for s in size], indexing="ij")
    pos = torch.stack([g.flatten() for g in grid], 1)  # (V, 3)
    lo = torch.tensor([max(2, s // 8) for s in size], device=dev)
    hi = torch.tensor([max(2, s // 4) for s in size], device=dev)
    largest = float(hi.prod())
    extent = torch.tensor(size, device=dev)
    target = ratio * fgf.sum(1)
    weight = torch.zeros(b, *size, device=dev)
    for _ in range(MAX_ROUNDS):
        covered = weight.flatten(1) > 0
        missing = target - (covered & fgf).sum(1)  # (B,)
        take = torch.where(missing > 0, (missing / largest).floor().clamp(min=1), 0).long()
        k = int(take.max())
        if k == 0:
            break
        free = fgf & ~covered
        edge = bandf & free
        cum = torch.where(edge.any(1, keepdim=True), edge, free).float().cumsum(1)
        u = rng.rand((b, k), gen, dev) * cum[:, -1:]
        idx = torch.searchsorted(cum, u, right=True).clamp(max=pos.shape[0] - 1)
        centre = pos[idx]  # (B, k, 3)
        side = lo + (rng.rand((b, k, 3), gen, dev) * (hi - lo + 1)).long().clamp(max=hi - lo)
        start = torch.minimum((centre - side // 2).clamp(min=0), extent - side)
        t = [_taper(s, start[..., a], side[..., a], ramp) for a, s in enumerate(size)]
        w = t[0][..., :, None, None] * t[1][..., None, :, None] * t[2][..., None, None, :]
        used = torch.arange(k, device=dev) < take[:, None]  # (B, k)
        w = (w * used[..., None, None, None]).amax(1)
        weight = torch.maximum(weight, w)
    return weight[:, None]


def stages(encoder: ResNetEncoder, x: torch.Tensor) -> list[torch.Tensor]:
    """The ResNet's stem and four stage outputs, finest first (the decoder's skips)."""
    net = encoder.net
    h = net.act(net.bn1(net.conv1(x)))
    if not net.no_max_pool:
        h = net.maxpool(h)
    out = [h]
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        out.append(layer(out[-1]))
    return out


class ResidualCuboidMasking(Objective):
    """Blur surface cuboids into the volume, then predict the residual heatmap
    (corrupted - original, in standardised units) voxel by voxel.

    Cuboids are centred in a band of `max(1, min side // 12)` voxels inside the foreground's
    boundary (the brain surface in skull-stripped MRI; here foreground is intensity above a
    tenth of the volume's range, and the edge of the field of view counts as surface where
    the foreground reaches it, as in crops) until they cover `mask_ratio` of the foreground;
    sides are 1/8 to 1/4 of the volume's (the paper's sizes are not in the review). Inside them
    the content is a Gaussian blur of the volume (sigma `max(1, min side / 16)` voxels),
    blended in with weights that ramp linearly over one voxel at each face. `blend` names
    the fill ('blurred' is the only one). 3D volumes and ResNet encoders only.

    Tahghighi et al. feed a VNet the pair (original, corrupted) in both orders, as for new
    lesions between two scans, and constrain the two residuals to be opposite (anti-symmetry)
    within the masked regions. Our encoders take one single-channel volume, so the network
    sees only the corrupted one and must both find the blurred cuboids and say what they
    hid: the loss is the MSE inside the cuboids (the paper's masked term) plus the MSE
    outside them, where the residual is zero, each averaged over its own voxels so that the
    many untouched voxels do not drown the cuboids. A voxel-wise heatmap needs fine detail
    that the last feature map (1/8 scale) has lost, so like the paper's VNet the decoder
    takes skips from every ResNet stage (SparK's light UNet, nothing masked in it); its
    output layer starts near zero, the trivial heatmap, instead of at random values."""

    def __init__(self, encoder: nn.Module, mask_ratio: float = 0.4, blend: str = "blurred"):
        super().__init__()
        if not isinstance(encoder, ResNetEncoder):
            raise ObjectiveError("residual_cuboid_masking needs a convolutional (resnet) "
                                 "encoder")
        net = encoder.net
        dims = net.conv1.weight.dim() - 2
        if dims != 3:
            raise ObjectiveError("residual_cuboid_masking needs 3D volumes (a 3D encoder); "
                                 f"got a {dims}D one")
        if blend not in BLENDS:
            raise ObjectiveError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
        if not 0.0 <= mask_ratio <= 1.0:
            raise ObjectiveError(f"mask_ratio must lie in [0, 1], got {mask_ratio}")
        self.encoder, self.mask_ratio, self.blend = encoder, float(mask_ratio), blend
        channels = [net.conv1.out_channels] + [_width(layer) for layer in
                                               (net.layer1, net.layer2, net.layer3, net.layer4)]
        self.decoder = HierarchicalDecoder(channels, net.conv1.in_channels, 3)
        with torch.no_grad():  # near zero, not zero: gradients must reach the encoder
            self.decoder.out.weight.mul_(0.01)
            self.decoder.out.bias.zero_()
        self._visible = [torch.ones(1, 1, 1, 1, 1)] * len(channels)  # nothing is masked

    @torch.no_grad()
    def corrupt(self, x: torch.Tensor, gen: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrupted volume in [0, 1], blending weights (B, 1, *S)) for a [0, 1] batch."""
        if x.dim() != 5:
            raise ObjectiveError("residual_cuboid_masking needs volumes (B, C, D, H, W); got "
                                 f"a {x.dim() - 2}D batch")
        with torch.autocast(x.device.type, enabled=False):
            size = list(x.shape[2:])
            fg = foreground(x)
            band = surface_band(fg, max(1, min(size) // 12))
            weight = place_cuboids(fg, band, self.mask_ratio, gen)
            blurred = gaussian_blur3d(x, max(1.0, min(size) * BLUR_SIGMA))
            xf = x.float()
            return xf + weight * (blurred - xf), weight

    def heatmap(self, corrupted: torch.Tensor) -> torch.Tensor:
        """The predicted residual (B, C, *S), fp32, for a standardised corrupted batch."""
        visible = [v.to(corrupted.device) for v in self._visible]
        return self.decoder(stages(self.encoder, corrupted), visible,
                            list(corrupted.shape[2:])).float()

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        clean = augment(x, policy, gen)
        corrupted, weight = self.corrupt(clean, gen)
        target = standardise(corrupted) - standardise(clean.float())
        pred = self.heatmap(standardise(corrupted).to(clean.dtype))
        inside = (weight > 0).float()
        return (losses.masked_pixel_mse(pred, target, inside)
                + losses.masked_pixel_mse(pred, target, 1.0 - inside))
