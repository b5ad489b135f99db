"""Colourisation (Ross et al. 2018, review [63]; Self-HER2Net's colour-space targets, [13]):
predict the chroma of a colour image from its luminance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import augment
from .base import Decoder, Objective, ObjectiveError, feature_map, standardise

# sRGB (D65) to CIE XYZ, IEC 61966-2-1:1999. The reference white is this matrix applied to
# RGB (1, 1, 1), so that sRGB white lands exactly on a = b = 0.
_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]])
_DELTA = 6.0 / 29.0
AB_SCALE = 110.0  # |a|, |b| of sRGB colours stay below about 110: ab / 110 is in [-1, 1]


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, ...) sRGB in [0, 1] to CIE 1976 L*a*b* (L in [0, 100]), in fp32.

    Formulas: sRGB decoding and the XYZ matrix from IEC 61966-2-1:1999; L*, a*, b* from
    CIE 15:2004 (Colorimetry, 3rd ed.), section 8.2.1: with t = X/Xn, Y/Yn, Z/Zn,
    f(t) = t^(1/3) above (6/29)^3 and t / (3 (6/29)^2) + 4/29 below;
    L* = 116 f(Y/Yn) - 16, a* = 500 (f(X/Xn) - f(Y/Yn)), b* = 200 (f(Y/Yn) - f(Z/Zn))."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        c = x.float().clamp(0.0, 1.0)
        linear = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        m = _RGB_TO_XYZ.to(c.device)
        xyz = torch.einsum("ij,bj...->bi...", m, linear)
        white = m.sum(1).view(1, 3, *([1] * (x.dim() - 2)))
        t = xyz / white
        f = torch.where(t > _DELTA**3, t.clamp(min=_DELTA**3) ** (1.0 / 3.0),
                        t / (3 * _DELTA**2) + 4.0 / 29.0)
        fx, fy, fz = f.unbind(1)
        return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)


class Colorization(Objective):
    """Regress the ab chroma of CIE Lab from the L luminance (review [63, 13]).

    Ross et al. colourise endoscopic video frames with a conditional GAN, and the catalog
    also lists video; we regress ab per 2D image with a smooth-L1 loss (no discriminator:
    a GAN would add a second network and instability for a pretext whose point is the
    encoder), and refuse 3D encoders, since we have no colour clips to learn from. The
    encoder sees L / 100 copied into its 3 input channels, so the stored encoder keeps 3
    channels and fine-tunes on RGB images with the same standardisation; a decoder regresses
    ab / 110 (about [-1, 1]) from its last feature map. The policy's augmentations are
    applied to the RGB image before the conversion, so colour jitter moves the target too.
    """

    def __init__(self, encoder: nn.Module, input_space: str = "L", target_space: str = "ab",
                 beta: float = 0.1):
        super().__init__()
        if input_space != "L":
            raise ObjectiveError(f"colorization input_space must be 'L', got {input_space!r}")
        if target_space != "ab":
            raise ObjectiveError(f"colorization target_space must be 'ab', got {target_space!r}")
        kwargs = getattr(encoder, "monai_kwargs", {})
        if kwargs.get("spatial_dims", 2) != 2:
            raise ObjectiveError("colorization is 2D only: a 3D encoder would need colour "
                                 "video clips, which we do not have")
        if kwargs.get("n_input_channels", 3) != 3:
            raise ObjectiveError("colorization needs a 3-channel encoder (it is fine-tuned "
                                 "on RGB images)")
        self.encoder, self.input_space, self.target_space = encoder, input_space, target_space
        self.beta = beta  # smooth-L1 switches from squared to absolute error here (ab / 110)
        self.decoder = Decoder(encoder.feature_dim, 2, 2)

    @staticmethod
    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder input (L / 100 in 3 channels, [0, 1]) and target (ab / 110)."""
        if x.dim() != 4:
            raise ObjectiveError("colorization is 2D only (got a volume or clip)")
        if x.shape[1] != 3:
            raise ObjectiveError(f"colorization needs colour (3-channel) images, got "
                                 f"{x.shape[1]} channel(s): grey images have no chroma")
        lab = rgb_to_lab(x)
        return (lab[:, :1] / 100).expand(-1, 3, -1, -1), lab[:, 1:] / AB_SCALE

    def predict(self, luminance: torch.Tensor) -> torch.Tensor:
        f = feature_map(self.encoder, standardise(luminance))
        return self.decoder(f, list(luminance.shape[2:]))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        luminance, target = self.split(augment(x, policy, gen))
        return F.smooth_l1_loss(self.predict(luminance).float(), target, beta=self.beta)
