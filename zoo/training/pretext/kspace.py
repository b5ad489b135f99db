"""CL-MRI (Ekanayake et al. 2025, review [20]): contrast between differently undersampled
versions of the same MR acquisition, so that the encoder learns features that do not
depend on which k-space lines were measured."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import rng
from ..augment import augment
from . import losses
from .base import Objective, ObjectiveError, mlp, standardise

MASKS = ("random_cartesian",)


def centre_lines(n_lines: int, centre_fraction: float, device: torch.device | None = None
                 ) -> torch.Tensor:
    """(n_lines,) bool: the fully sampled low-frequency band, symmetric about DC, in the
    unshifted order of torch.fft (DC at index 0). At least DC and its two neighbours are
    kept, since without the band the image contrast itself is lost."""
    freq = torch.fft.fftfreq(n_lines, d=1.0 / n_lines, device=device).abs()
    half = max(1, round(centre_fraction * n_lines / 2))
    return freq <= half


def cartesian_masks(n: int, n_lines: int, accelerations: torch.Tensor,
                    centre_fraction: float, gen: torch.Generator | None,
                    device: torch.device) -> torch.Tensor:
    """(n, n_lines) bool random Cartesian masks: the centre band plus lines drawn uniformly
    without replacement until round(n_lines / R) lines are kept, R per sample
    (`accelerations`, shape (n,)). Each row keeps the lowest-ranked random scores, with the
    centre lines forced first, so the draw is one vectorised sort."""
    centre = centre_lines(n_lines, centre_fraction, device)
    scores = rng.rand((n, n_lines), gen, device)
    scores = torch.where(centre, torch.full_like(scores, -1.0), scores)
    rank = scores.argsort(1).argsort(1)
    keep = (n_lines / accelerations.to(device).float()).round()
    keep = keep.clamp(min=int(centre.sum()), max=n_lines)
    return rank < keep[:, None]


def undersample(x: torch.Tensor, line_mask: torch.Tensor) -> torch.Tensor:
    """Zero-filled reconstruction: the magnitude of the inverse FFT of the image's 2D
    k-space with the phase-encoding lines (rows, axis -2) outside `line_mask` set to zero.
    x: (B, C, H, W) or (B, C, D, H, W), the FFT taken per slice over the last two axes;
    line_mask: (B, H) bool in torch.fft's unshifted order. Computed in fp32 with autocast
    off: bf16 FFTs lose the small high-frequency coefficients."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        k = torch.fft.fft2(x.float())
        shape = (x.shape[0], *([1] * (x.dim() - 3)), x.shape[-2], 1)
        k = k * line_mask.reshape(shape).to(k.real.dtype)
        return torch.fft.ifft2(k).abs()


class CLMRI(Objective):
    """Contrast of two undersamplings of one image (CL-MRI, review [20]).

    The paper undersamples the raw multi-coil k-space that the scanner measured; we have
    magnitude images only, so k-space is simulated as the 2D FFT of each image (per slice
    of a volume, over the last two axes). Magnitude images make that k-space
    Hermitian-symmetric, unlike real scanner data with its phase, so a line and its mirror
    carry the same information here, and the aliasing is milder than in practice. Each view
    keeps a random Cartesian mask (`mask`, the only kind offered): a fully sampled centre
    band (`centre_fraction` of the lines) plus random lines up to 1/R of all lines, with R
    drawn per sample and view from `acceleration_factors`; the zero-filled magnitude goes
    to the encoder, and NT-Xent with `temperature` pulls the two views together. The
    paper trains the feature extractor of a reconstruction network; here it is the
    encoder, with a global projection head. Both views share one draw of the policy's
    augmentations, so, as in the paper, they differ by their undersampling only.
    """

    def __init__(self, encoder: nn.Module, temperature: float = 0.1,
                 acceleration_factors: Sequence[float] = (2, 4, 8),
                 mask: str = "random_cartesian", centre_fraction: float = 0.08,
                 projection_dim: int = 128):
        super().__init__()
        if mask not in MASKS:
            raise ObjectiveError(f"cl_mri mask must be one of {', '.join(MASKS)}, got {mask!r}")
        factors = [float(r) for r in acceleration_factors]
        if not factors or any(r < 1 for r in factors):
            raise ObjectiveError("cl_mri acceleration_factors must be a non-empty list of "
                                 f"factors >= 1, got {list(acceleration_factors)}")
        if not 0 < centre_fraction <= 1:
            raise ObjectiveError(f"centre_fraction must be in (0, 1], got {centre_fraction}")
        self.encoder, self.temperature, self.mask = encoder, temperature, mask
        self.centre_fraction = centre_fraction
        self.register_buffer("factors", torch.tensor(factors), persistent=False)
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim)

    def undersampled_view(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        n, lines = x.shape[0], x.shape[-2]
        pick = rng.randint(0, len(self.factors), (n,), gen, x.device)
        masks = cartesian_masks(n, lines, self.factors.to(x.device)[pick],
                                self.centre_fraction, gen, x.device)
        return undersample(x, masks)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        base = augment(x, policy, gen)
        z1, z2 = (self.projector(self.encoder(standardise(self.undersampled_view(base, gen))))
                  for _ in range(2))
        return losses.nt_xent(z1.float(), z2.float(), self.temperature)
