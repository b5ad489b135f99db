"""DiRA (Haghighi et al. 2022/2024, review [25]): discrimination, restoration and an
adversarial realism term on one encoder-decoder, trained with one scalar loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from zoo.architectures import ResNetEncoder

from .. import rng
from ..augment import Policy, augment
from . import losses
from .base import Decoder, ObjectiveError, feature_map, standardise
from .generative import blank, genesis_corrupt
from .hybrid import ContrastiveRestoration

CELLS = 7  # mask cells per axis: 4-pixel cells at 28 pixels, 9 at 64


def cell_mask(shape: torch.Size, ratio: float, gen: torch.Generator | None,
              device: torch.device, cells: int = CELLS) -> torch.Tensor:
    """(B, 1, *spatial), 1 on exactly round(ratio * cells**dims) of a regular grid of
    cells per sample, so `ratio` is the masked share of the image (exact when the size
    divides by `cells`)."""
    b, size = shape[0], list(shape[2:])
    n = cells ** len(size)
    rank = rng.rand((b, n), gen, device).argsort(1).argsort(1)
    masked = (rank < round(ratio * n)).float().view(b, 1, *[cells] * len(size))
    return F.interpolate(masked, size=size, mode="nearest")


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """-E[log D(real)] - E[log(1 - D(fake))] on logits, in fp32 (softplus form: exact for
    large logits, where log(sigmoid) would underflow)."""
    return F.softplus(-real.float()).mean() + F.softplus(fake.float()).mean()


def generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -E[log D(fake)]: it keeps a useful gradient while the
    discriminator still rejects the restorations easily, where log(1 - D) would not."""
    return F.softplus(-fake.float()).mean()


class PatchDiscriminator(nn.Module):
    """A small convolutional critic: a grid of real-or-restored logits, one per receptive
    field, so it judges local texture and anatomy rather than the whole image at once. No
    normalisation layers: it sees real and restored batches separately, and batch
    statistics would let it tell them apart by the batch instead of the image."""

    def __init__(self, channels: int, dims: int, width: int | None = None):
        super().__init__()
        width = width or (16 if dims == 2 else 8)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.net = nn.Sequential(
            conv(channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            conv(width, 2 * width, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            conv(2 * width, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DiRA(ContrastiveRestoration):
    """DiRA [25]: the encoder sees a distorted view; its pooled features are contrasted
    with a second, clean view (discrimination), its feature map is decoded back to the
    clean view (restoration, squared error over the whole image) and a discriminator
    judges the restoration against that clean view (adversarial).

    Distortion: Models Genesis' intensity curve and local shuffling, then a share
    `mask_ratio` (the catalog's setting) of a 7-per-axis grid of cells blanked to
    mid-grey, in place of Models Genesis' random in/out-painting. The paper plugs MoCo v2,
    Barlow Twins or SimSiam in as the discrimination branch; here it is in-batch NT-Xent,
    as in ContrastiveRestoration, so that the three terms share one encoder pass. A GAN is
    usually trained by alternating discriminator and generator steps; the loop here takes
    one step on one scalar, so that scalar holds the discriminator's loss on detached
    images (only the discriminator learns from it) plus the weighted non-saturating
    generator loss computed through a copy of the discriminator's weights that is cut from
    the graph (only the encoder and decoder learn from it); `terms` returns the parts."""

    def __init__(self, encoder: nn.Module, adversarial_weight: float = 0.001,
                 mask_ratio: float = 0.4, restoration_weight: float = 10.0,
                 temperature: float = 0.2, projection_dim: int = 128,
                 decoder_width: int | None = None):
        if not isinstance(encoder, ResNetEncoder):
            raise ObjectiveError("dira needs a convolutional (resnet) encoder: it decodes "
                                 "the last feature map")
        if not 0.0 <= mask_ratio < 1.0:
            raise ObjectiveError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if adversarial_weight < 0 or restoration_weight < 0 or temperature <= 0:
            raise ObjectiveError("adversarial_weight and restoration_weight must be >= 0 "
                                 "and temperature > 0")
        super().__init__(encoder, temperature, restoration_weight, projection_dim)
        self.adversarial_weight, self.mask_ratio = adversarial_weight, mask_ratio
        dims, channels = encoder.net.conv1.weight.dim() - 2, encoder.net.conv1.in_channels
        if decoder_width is not None:  # narrower than Decoder's default, for quick runs
            self.decoder = Decoder(encoder.feature_dim, channels, dims, decoder_width)
        self.discriminator = PatchDiscriminator(channels, dims)

    def distort(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Intensity and shuffling distortions, then `mask_ratio` of the cells blanked."""
        shaded = genesis_corrupt(x, gen, p_paint=0.0)
        return blank(shaded, cell_mask(x.shape, self.mask_ratio, gen, x.device))

    def frozen_discriminator(self, x: torch.Tensor) -> torch.Tensor:
        """The discriminator with detached weights: gradient reaches `x`, not the weights."""
        weights = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, weights, (x,))

    def terms(self, x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None
              ) -> dict[str, torch.Tensor]:
        """The four unweighted parts of the loss."""
        v1, v2 = augment(x, policy, gen), augment(x, policy, gen)
        f1 = feature_map(self.encoder, standardise(self.distort(v1, gen)))
        f2 = feature_map(self.encoder, standardise(v2))
        g1, g2 = (self.projector(f.flatten(2).mean(-1)).float() for f in (f1, f2))
        restored = self.decoder(f1, list(x.shape[2:]))
        real = standardise(v1)
        return {
            "discrimination": losses.nt_xent(g1, g2, self.temperature),
            "restoration": F.mse_loss(restored.float(), real.float()),
            "generator": generator_loss(self.frozen_discriminator(restored)),
            "discriminator": discriminator_loss(self.discriminator(real.detach()),
                                                self.discriminator(restored.detach())),
        }

    def combine(self, t: dict[str, torch.Tensor]) -> torch.Tensor:
        """The one scalar the loop steps on. The discriminator's term is unweighted: it is
        the only term that reaches the discriminator, so a weight would only rescale its
        step (and Adam all but undoes a constant scale)."""
        return (t["discrimination"] + self.weight * t["restoration"]
                + self.adversarial_weight * t["generator"] + t["discriminator"])

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        return self.combine(self.terms(x, policy, gen))
