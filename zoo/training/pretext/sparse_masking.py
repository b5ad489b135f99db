"""SparK (Tian et al. 2023, review [84]): masked image modelling for convolutional encoders.

A CNN has no tokens to drop, so SparK treats the visible patches as a sparse image:
masked sites hold nothing at any depth, and a hierarchical (UNet-like) decoder fills them
from the multi-scale features. This module emulates the sparse convolutions densely."""

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
from .vitparts import patchify

DECODERS = ("hierarchical",)


def effective_patch(patch_size: int, size: list[int]) -> int:
    """The patch side used: the catalog's, capped at a quarter of the smallest input side
    (floor), so that every axis has at least 4 patches to mask and to keep."""
    return max(1, min(patch_size, min(size) // 4))


def patch_mask(batch: int, size: list[int], patch: int, ratio: float,
               gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(B, L): 1 for masked patches, exactly round(L * ratio) per sample (at least one
    masked and one visible), patches in row-major order like `vitparts.patchify`."""
    n = math.prod(s // patch for s in size)
    masked = min(n - 1, max(1, round(n * ratio)))
    order = torch.argsort(rng.rand((batch, n), gen, device), dim=1)
    mask = torch.zeros(batch, n, device=device)
    return mask.scatter_(1, order[:, :masked], 1.0)


def pixel_mask(mask: torch.Tensor, size: list[int], patch: int) -> torch.Tensor:
    """(B, L) patch mask -> (B, 1, *size) pixel mask; pixels past the last whole patch (when
    a side is not a multiple of the patch) are never masked."""
    grid = [s // patch for s in size]
    m = mask.view(mask.shape[0], 1, *grid)
    for axis in range(len(size)):
        m = m.repeat_interleave(patch, dim=2 + axis)
    pad = []
    for s, g in zip(reversed(size), reversed(grid), strict=True):
        pad += [0, s - g * patch]
    return F.pad(m, pad)


def stage_mask(visible: torch.Tensor, size: list[int]) -> torch.Tensor:
    """The visibility of a stage's sites: the input visibility sampled at each site by
    nearest neighbour, which is the patch mask itself whenever the stage's stride divides
    the patch."""
    return F.interpolate(visible, size=size, mode="nearest")


def masked_stages(encoder: ResNetEncoder, x: torch.Tensor, visible: torch.Tensor
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The ResNet's stage outputs (stem, layer1..4) with masked sites zeroed after every
    stage, and each stage's visibility (B, 1, *s). x is zeroed where masked first."""
    net = encoder.net
    h = x * visible
    h = net.act(net.bn1(net.conv1(h)))
    if not net.no_max_pool:
        h = net.maxpool(h)
    feats, masks = [], []
    for layer in (None, net.layer1, net.layer2, net.layer3, net.layer4):
        if layer is not None:
            h = layer(h)
        m = stage_mask(visible, list(h.shape[2:])).to(h.dtype)
        h = h * m
        feats.append(h)
        masks.append(m)
    return feats, masks


def _width(layer: nn.Module) -> int:
    """Output channels of a ResNet stage: those of its last normalisation."""
    norms = [m for m in layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return norms[-1].num_features


class HierarchicalDecoder(nn.Module):
    """SparK's light UNet: at every stage, masked (empty) sites get a learned mask
    embedding and the stage is projected to its decoder width (the stage's own, capped);
    from the deepest stage up, the running map is projected to the next stage's width,
    upsampled to its size, added to it and refined by a 3x3 convolution; the top is
    resampled to the input size and mapped to pixels."""

    def __init__(self, stage_channels: list[int], out_channels: int, dims: int,
                 cap: int | None = None):
        super().__init__()
        # 3x3x3 convolutions at full resolution cost 27x per channel pair: keep 3D narrow.
        cap = cap or (64 if dims == 2 else 16)
        widths = [min(c, cap) for c in stage_channels]
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.mode = "bilinear" if dims == 2 else "trilinear"
        self.tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, *[1] * dims))
                                       for c in stage_channels)
        self.project = nn.ModuleList(conv(c, w, 1) for c, w in zip(stage_channels, widths,
                                                                    strict=True))
        self.up = nn.ModuleList(conv(widths[i + 1], widths[i], 1) for i in range(len(widths) - 1))
        self.refine = nn.ModuleList(nn.Sequential(conv(w, w, 3, padding=1), norm(w),
                                                  nn.ReLU(inplace=True)) for w in widths)
        self.out = conv(widths[0], out_channels, 1)

    def forward(self, feats: list[torch.Tensor], masks: list[torch.Tensor],
                size: list[int]) -> torch.Tensor:
        d = None
        for i in reversed(range(len(feats))):
            f = torch.where(masks[i] > 0, feats[i], self.tokens[i].to(feats[i].dtype))
            f = self.project[i](f)
            if d is not None:  # a 1x1 convolution commutes with the resampling: do it first
                d = F.interpolate(self.up[i](d), size=list(f.shape[2:]), mode=self.mode,
                                  align_corners=False)
                f = f + d.to(f.dtype)
            d = self.refine[i](f)
        d = F.interpolate(d, size=size, mode=self.mode, align_corners=False)
        return self.out(d)


class SparK(Objective):
    """Mask whole patches, encode the rest as a sparse image, and reconstruct the masked
    pixels with a hierarchical decoder; 2D and 3D ResNets.

    SparK runs true sparse convolutions over the visible sites; as its reference code also
    allows, we emulate them densely: masked patches are zeroed in the input and every
    stage's output is multiplied by the stage's mask (a site is masked when the input pixel
    nearest to it is; at 28 px the deepest map is the patch grid itself), so masked sites
    stay empty at every depth and carry nothing of the masked content. Unlike the reference,
    the mask is applied at stage boundaries rather than after every layer, and batch norm
    statistics include the zeroed sites. `patch_size` (32 in SparK, the ResNet's total
    stride at 224 px) is capped at a quarter of the smallest input side (7 at 28 px, so
    10 of 16 patches are masked at 0.6); pixels past the last whole patch are never masked
    nor scored. The loss is the mean
    squared error on masked patches only, against targets normalised per patch (mean 0,
    variance 1, as SparK and MAE's norm_pix_loss)."""

    def __init__(self, encoder: nn.Module, mask_ratio: float = 0.6, patch_size: int = 32,
                 decoder: str = "hierarchical"):
        super().__init__()
        if not isinstance(encoder, ResNetEncoder):
            raise ObjectiveError("spark needs a convolutional (resnet) encoder")
        if decoder not in DECODERS:
            raise ObjectiveError(f"spark decoder must be one of {', '.join(DECODERS)}, "
                                 f"got {decoder!r}")
        if not 0.0 < mask_ratio < 1.0 or patch_size < 1:
            raise ObjectiveError("spark needs 0 < mask_ratio < 1 and patch_size >= 1")
        self.encoder, self.mask_ratio, self.patch_size = encoder, mask_ratio, patch_size
        net = encoder.net
        dims = net.conv1.weight.dim() - 2
        channels = [net.conv1.out_channels] + [_width(layer) for layer in
                                               (net.layer1, net.layer2, net.layer3, net.layer4)]
        self.decoder = HierarchicalDecoder(channels, net.conv1.in_channels, dims)

    def masked(self, x: torch.Tensor, gen: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(patch mask (B, L), visibility (B, 1, *S), patch side) for a batch."""
        size = list(x.shape[2:])
        p = effective_patch(self.patch_size, size)
        mask = patch_mask(x.shape[0], size, p, self.mask_ratio, gen, x.device)
        return mask, 1.0 - pixel_mask(mask, size, p), p

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        x = standardise(augment(x, policy, gen))
        mask, visible, p = self.masked(x, gen)
        feats, masks = masked_stages(self.encoder, x, visible)
        pred = self.decoder(feats, masks, list(x.shape[2:])).float()
        target = patchify(x.float(), p)
        return losses.masked_mse(patchify(pred, p), target, mask,
                                 norm_pix=target.shape[-1] > 1)  # one value has no spread
