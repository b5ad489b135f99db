"""Generative objectives (review 4.3): MAE and SimMIM on ViTs; Models Genesis restoration,
context restoration (patch swapping) and in-painting on convolutional encoders with a
decoder."""

from __future__ import annotations

import torch
from torch import nn

from .. import rng
from ..augment import augment
from . import losses
from .base import Decoder, Objective, feature_map, need_vit, standardise
from .vitparts import (
    embed_patches,
    gather_tokens,
    learned_positions,
    light_transformer,
    patchify,
    positions,
    transformer,
)

_CPU = torch.device("cpu")  # where host-side draws (loop indices, boxes) end up


class MAE(Objective):
    """He et al. 2022 (review [26, 87, 59]): encode visible patches only, reconstruct the
    masked ones with a light decoder. `mask_ratio` comes from the recommendation (the
    review advises less than the natural-image 0.75 for small findings)."""

    def __init__(self, encoder: nn.Module, mask_ratio: float = 0.6, decoder_dim: int = 96,
                 decoder_depth: int = 2, norm_pix_loss: bool = True):
        super().__init__()
        vit = need_vit(encoder)
        self.encoder, self.mask_ratio, self.norm_pix = encoder, mask_ratio, norm_pix_loss
        d, p = vit.feature_dim, vit.patch_size
        n_tokens = positions(vit).shape[1]
        channels = vit.net.patch_embedding.patch_embeddings.in_channels
        dims = vit.net.patch_embedding.patch_embeddings.weight.dim() - 2
        self.to_decoder = nn.Linear(d, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos = learned_positions(n_tokens, decoder_dim)
        self.decoder = light_transformer(decoder_dim, decoder_depth)
        self.to_pixels = nn.Linear(decoder_dim, channels * p**dims)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        vit = self.encoder
        x = standardise(augment(x, policy, gen))
        tokens = embed_patches(vit, x) + positions(vit)
        b, n, _ = tokens.shape
        keep = max(1, int(round(n * (1 - self.mask_ratio))))
        order = torch.argsort(rng.rand((b, n), gen, x.device), dim=1)
        visible = order[:, :keep]
        encoded = transformer(vit, gather_tokens(tokens, visible))
        dec = self.mask_token.expand(b, n, -1).clone()
        dec.scatter_(1, visible[..., None].expand(-1, -1, dec.shape[-1]),
                     self.to_decoder(encoded).to(dec.dtype))  # bf16 under autocast
        dec = dec + self.decoder_pos
        for block in self.decoder:
            dec = block(dec)
        pred = self.to_pixels(dec)
        mask = torch.ones(b, n, device=x.device)
        mask.scatter_(1, visible, 0.0)
        return losses.masked_mse(pred, patchify(x, vit.patch_size), mask, self.norm_pix)


class SimMIM(Objective):
    """Xie et al. 2022; dental radiographs [2]: masked patches become a learnable token but
    stay in the encoder, which keeps positions; a linear head predicts raw pixels."""

    def __init__(self, encoder: nn.Module, mask_ratio: float = 0.5):
        super().__init__()
        vit = need_vit(encoder)
        self.encoder, self.mask_ratio = encoder, mask_ratio
        channels = vit.net.patch_embedding.patch_embeddings.in_channels
        dims = vit.net.patch_embedding.patch_embeddings.weight.dim() - 2
        self.mask_token = nn.Parameter(torch.zeros(1, 1, vit.feature_dim))
        self.head = nn.Linear(vit.feature_dim, channels * vit.patch_size**dims)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        vit = self.encoder
        x = standardise(augment(x, policy, gen))
        tokens = embed_patches(vit, x)
        b, n, _ = tokens.shape
        mask = (rng.rand((b, n), gen, x.device) < self.mask_ratio).float()
        tokens = tokens * (1 - mask[..., None]) + self.mask_token * mask[..., None]
        pred = self.head(transformer(vit, tokens + positions(vit)))
        target = patchify(x, vit.patch_size)
        return (pred - target).abs().mean(-1).mul(mask).sum() / mask.sum().clamp(min=1)


def bezier_intensity(x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Models Genesis' non-linear intensity transform: a random cubic Bezier curve from
    (0, 0) to (1, 1), sometimes inverted, applied per sample."""
    out = torch.empty_like(x)
    t = torch.linspace(0, 1, 256, device=x.device)
    for i in range(x.shape[0]):
        p1, p2 = rng.rand((2,), gen, _CPU), rng.rand((2,), gen, _CPU)
        xs = 3 * (1 - t) ** 2 * t * p1[0] + 3 * (1 - t) * t**2 * p2[0] + t**3
        ys = 3 * (1 - t) ** 2 * t * p1[1] + 3 * (1 - t) * t**2 * p2[1] + t**3
        xs, order = torch.sort(xs)
        ys = ys[order]
        idx = torch.searchsorted(xs, x[i].clamp(0, 1).contiguous()).clamp(1, 255)
        x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
        w = (x[i] - x0) / (x1 - x0).clamp(min=1e-6)
        y = y0 + w.clamp(0, 1) * (y1 - y0)
        out[i] = 1 - y if float(rng.rand((), gen)) < 0.5 else y
    return out


def _box(size: list[int], lo: float, hi: float, gen: torch.Generator | None) -> tuple[slice, ...]:
    out = []
    for s in size:
        length = max(1, int(s * rng.uniform(lo, hi, gen)))
        start = int(rng.randint(0, s - length + 1, (1,), gen))
        out.append(slice(start, start + length))
    return tuple(out)


def genesis_corrupt(x: torch.Tensor, gen: torch.Generator | None, p_intensity: float = 0.9,
                    p_shuffle: float = 0.5, p_paint: float = 0.9) -> torch.Tensor:
    """Models Genesis corruptions [95]: non-linear intensity, local pixel shuffling,
    and in-painting or out-painting with noise."""
    x = x.clone()
    size = list(x.shape[2:])
    use = rng.rand((x.shape[0],), gen, _CPU) < p_intensity
    if use.any():
        x[use] = bezier_intensity(x[use], gen)
    for i in range(x.shape[0]):
        if float(rng.rand((), gen)) < p_shuffle:
            for _ in range(8):
                box = _box(size, 0.05, 0.2, gen)
                patch = x[(i, slice(None), *box)]
                flat = patch.reshape(patch.shape[0], -1)
                perm = rng.randperm(flat.shape[1], gen, x.device)
                x[(i, slice(None), *box)] = flat[:, perm].reshape(patch.shape)
        if float(rng.rand((), gen)) < p_paint:
            if float(rng.rand((), gen)) < 0.5:  # in-painting
                for _ in range(3):
                    box = _box(size, 0.1, 0.3, gen)
                    x[(i, slice(None), *box)] = rng.rand(
                        x[(i, slice(None), *box)].shape, gen, x.device)
            else:  # out-painting
                keep = _box(size, 0.4, 0.7, gen)
                kept = x[(i, slice(None), *keep)].clone()
                x[i] = rng.rand(x[i].shape, gen, x.device)
                x[(i, slice(None), *keep)] = kept
    return x


def swap_patches(x: torch.Tensor, gen: torch.Generator | None, swaps: int = 10,
                 fraction: float = 0.1) -> torch.Tensor:
    """Context restoration [9]: swap pairs of same-sized patches; intensities are kept,
    only the layout is disturbed."""
    x = x.clone()
    size = list(x.shape[2:])
    side = [max(1, int(s * fraction)) for s in size]
    for i in range(x.shape[0]):
        for _ in range(swaps):
            a = [int(rng.randint(0, s - p + 1, (1,), gen)) for s, p in
                 zip(size, side, strict=True)]
            b = [int(rng.randint(0, s - p + 1, (1,), gen)) for s, p in
                 zip(size, side, strict=True)]
            sa = tuple(slice(u, u + p) for u, p in zip(a, side, strict=True))
            sb = tuple(slice(u, u + p) for u, p in zip(b, side, strict=True))
            pa = x[(i, slice(None), *sa)].clone()
            x[(i, slice(None), *sa)] = x[(i, slice(None), *sb)]
            x[(i, slice(None), *sb)] = pa
    return x


class Restoration(Objective):
    """Encoder-decoder restoration of corrupted images; `corruption` picks the scheme."""

    def __init__(self, encoder: nn.Module, corruption: str = "genesis"):
        super().__init__()
        self.encoder, self.corruption = encoder, corruption
        dims = encoder.net.conv1.weight.dim() - 2
        channels = encoder.net.conv1.in_channels
        self.decoder = Decoder(encoder.feature_dim, channels, dims)

    def corrupt(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return genesis_corrupt(x, gen) if self.corruption == "genesis" else swap_patches(x, gen)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a standardised image and decode it back at its own size."""
        return self.decoder(feature_map(self.encoder, x), list(x.shape[2:]))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        clean = augment(x, policy, gen)
        restored = self.restore(standardise(self.corrupt(clean, gen)))
        return torch.nn.functional.mse_loss(restored, standardise(clean))


class ModelsGenesis(Restoration):
    """Zhou et al. 2019 (review [95])."""

    def __init__(self, encoder: nn.Module):
        super().__init__(encoder, "genesis")


class ContextRestoration(Restoration):
    """Chen et al. 2019 (review [9])."""

    def __init__(self, encoder: nn.Module, swaps: int = 10):
        super().__init__(encoder, "swap")


def hole_mask(shape: torch.Size, holes: int, fraction: float, gen: torch.Generator | None,
              device: torch.device) -> torch.Tensor:
    """(B, 1, *spatial), 1 inside `holes` boxes per sample (rectangles in 2D, cuboids in
    3D) whose sides are `fraction` of the image's; boxes may overlap. Drawn for the whole
    batch at once, so a CUDA generator costs one draw per axis, not one per box."""
    b, size = shape[0], list(shape[2:])
    inside = torch.ones(b, holes, *[1] * len(size), dtype=torch.bool, device=device)
    for axis, s in enumerate(size):
        side = max(1, round(s * fraction))
        start = rng.randint(0, s - side + 1, (b, holes), gen, device)
        start = start.view(b, holes, *[1] * len(size))
        at = [1] * (2 + len(size))
        at[2 + axis] = s
        pos = torch.arange(s, device=device).view(at)
        inside = inside & (pos >= start) & (pos < start + side)
    return inside.any(1, keepdim=True).float()


def blank(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fill the masked region with mid-grey, which standardises to zero: like the context
    encoder's mean fill, it says nothing about what was there."""
    return torch.where(mask.bool(), torch.full_like(x, 0.5), x)


class Inpainting(Restoration):
    """Context encoders (Pathak et al. 2016); for segmentation, Dominic et al. 2023 (review
    [17]). Only the removed boxes are scored, so the network must infer them from the
    surrounding anatomy instead of copying what it saw. `hole_fraction` is a side fraction,
    as context restoration's patch fraction, so the small-lesion cap on both means the same.
    Pathak's adversarial term, there to sharpen the fill for viewing, is left out."""

    def __init__(self, encoder: nn.Module, holes: int = 4, hole_fraction: float = 0.15):
        super().__init__(encoder, "holes")
        self.holes, self.hole_fraction = holes, hole_fraction

    def removed(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return hole_mask(x.shape, self.holes, self.hole_fraction, gen, x.device)

    def corrupt(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return blank(x, self.removed(x, gen))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        clean = augment(x, policy, gen)
        mask = self.removed(clean, gen)
        restored = self.restore(standardise(blank(clean, mask)))
        return losses.masked_pixel_mse(restored, standardise(clean), mask)
