"""Cross-modal objectives (review 4.1.4, 4.3.3): synthesise one modality from another,
fill in a missing MR sequence, and align two modalities CLIP-style.

The papers pair co-registered images of different modalities (retinography with
angiography, T1/T2/FLAIR, fundus with OCT); our data has none. The closest honest stand-in
is a multi-channel image whose channels (or channel groups) act as the modalities: they are
registered by construction, and what one channel says about another is real signal. A
single-channel input has no second modality, so these objectives refuse it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss
from torch import nn

from zoo.architectures import ResNetEncoder

from .. import rng
from ..augment import augment
from .base import Decoder, Objective, ObjectiveError, feature_map, standardise


def in_channels(encoder: nn.Module) -> int:
    """The channel count an encoder (ResNet or ViT) was built for."""
    kwargs = getattr(encoder, "monai_kwargs", {})
    return int(kwargs.get("n_input_channels", kwargs.get("in_channels", 0)))


def conv_dims(encoder: nn.Module) -> int:
    """Spatial dims of a ResNet encoder; the decoders of the synthesis objectives upsample
    its last convolutional map, which a ViT does not have."""
    if not isinstance(encoder, ResNetEncoder):
        raise ObjectiveError("this objective needs a convolutional (resnet) encoder")
    return encoder.net.conv1.weight.dim() - 2


def need_modalities(channels: int, method: str) -> None:
    if channels < 2:
        raise ObjectiveError(f"{method} needs an input with at least 2 channels (one per "
                             f"modality); got {channels}")


def modality_split(channels: int, source_channels: int | None = None
                   ) -> tuple[list[int], list[int]]:
    """Source and target channel indices: the first `source_channels` (default: the first
    half, rounded down) against the rest."""
    k = channels // 2 if source_channels is None else source_channels
    if not 1 <= k < channels:
        raise ObjectiveError(f"source_channels must lie in [1, {channels - 1}] for a "
                             f"{channels}-channel input; got {source_channels}")
    return list(range(k)), list(range(k, channels))


def keep_channels(x: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Zero every channel not in `keep`. On standardised input a zero channel adds nothing
    to the first layer's linear map, so this drops the channel while the encoder keeps the
    in_channels its card states."""
    mask = torch.zeros(x.shape[1], device=x.device, dtype=x.dtype)
    mask[keep] = 1
    return x * mask.view(1, -1, *[1] * (x.dim() - 2))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `standardise`: decoder outputs back to the [0, 1] scale of the images."""
    return x * 0.5 + 0.5


def ssim_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(1 - SSIM) + L1 on [0, 1] images, (B, C, *spatial) in 2D or 3D. SSIM (Wang et al.
    2004; MONAI's, Gaussian window of 11 and sigma 1.5, or the image side if smaller) scores
    local structure, which is what a vessel map needs; L1 keeps absolute intensities, which
    SSIM barely sees in flat regions. Computed in fp32 with autocast off: the variances are
    differences of squares, which bf16 loses."""
    pred, target = pred.float(), target.float()
    win = min(11, *pred.shape[2:])
    win -= 1 - win % 2  # odd
    with torch.autocast(pred.device.type, enabled=False):
        structure = SSIMLoss(pred.dim() - 2, data_range=1.0, win_size=win)(pred, target)
        return structure + (pred - target).abs().mean()


def clip_loss(za: torch.Tensor, zb: torch.Tensor, temperature: float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (Radford et al. 2021): cosine similarities of every
    modality-A embedding with every modality-B one, over the temperature; pairs of the same
    sample sit on the diagonal, and the cross entropy is taken over rows (A to B) and
    columns (B to A), averaged. In fp32: bf16 logits over 0.07 lose the softmax's tail."""
    with torch.autocast(za.device.type, enabled=False):  # the matmul too, not just inputs
        za, zb = F.normalize(za.float(), dim=1), F.normalize(zb.float(), dim=1)
        logits = za @ zb.t() / temperature
        target = torch.arange(len(za), device=za.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class CrossModalSynthesis(Objective):
    """Multimodal reconstruction (Hervella et al. [28, 29], Morano et al. [53]): an
    encoder-decoder sees colour retinography and synthesises the registered fluorescein
    angiography, which teaches vascular anatomy; [30] adds separate shared and
    modality-exclusive branches, left out here.

    What we do: the source channel group stands for one modality and the target group for
    the other (`source_channels`, default the first half). The encoder gets the full
    channel count its card states with the target channels zeroed, and a decoder
    synthesises the target channels, scored by SSIM + L1 (`loss: ssim_l1`). The papers need
    a registration step between modalities; channels of one image are registered by
    construction, so `registration: required` is met and only validated."""

    def __init__(self, encoder: nn.Module, loss: str = "ssim_l1",
                 registration: str = "required", source_channels: int | None = None):
        super().__init__()
        if loss != "ssim_l1":
            raise ObjectiveError(f"loss must be 'ssim_l1' (the only one implemented); got "
                                 f"{loss!r}")
        if registration != "required":
            raise ObjectiveError(f"registration must be 'required' (channels of one image are "
                                 f"registered); got {registration!r}")
        channels = in_channels(encoder)
        need_modalities(channels, "cross_modal_synthesis")
        self.encoder = encoder
        self.source, self.target = modality_split(channels, source_channels)
        self.decoder = Decoder(encoder.feature_dim, len(self.target), conv_dims(encoder))

    def synthesise(self, x: torch.Tensor) -> torch.Tensor:
        """The target channels, on the [0, 1] scale, from an image in [0, 1]."""
        seen = keep_channels(standardise(x), self.source)
        return to_unit(self.decoder(feature_map(self.encoder, seen), list(x.shape[2:])))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        need_modalities(x.shape[1], "cross_modal_synthesis")
        view = augment(x, policy, gen)  # one geometry for every channel: still registered
        return ssim_l1(self.synthesise(view), view[:, self.target])


def drop_one(x: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero one channel per sample, chosen uniformly; returns the image and the indices."""
    b, c = x.shape[:2]
    k = rng.randint(0, c, (b,), gen, x.device)
    keep = (torch.arange(c, device=x.device) != k[:, None]).to(x.dtype)
    return x * keep.view(b, c, *[1] * (x.dim() - 2)), k


def pick(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Channel k[i] of sample i: (B, C, *s) -> (B, 1, *s)."""
    index = k.view(-1, 1, *[1] * (x.dim() - 2)).expand(-1, 1, *x.shape[2:])
    return x.gather(1, index)


class MissingSequenceSynthesis(Objective):
    """Auto-GAN (Cao et al. 2020, review [7]) synthesises a missing MR sequence (FLAIR from
    T1, T1-C and T2) with one generator for any missing sequence, told which by a modality
    mask; an auto-encoder of the target sequence supervises it with its self-representation
    (target-specific features), and an adversarial term sharpens the output.

    What we do: channels stand for sequences. Per sample one channel, drawn at random, is
    zeroed (the zero channel doubles as the mask) and synthesised from the rest, L1 on that
    channel. For the collaborative part (`generator: collaborative`, the only value) the
    same encoder and decoder see the dropped channel alone and must reconstruct it, and the
    synthesis features are pulled to those stop-gradient self-representation features;
    `self_reconstruction_weight` weighs the two together. The zoo stores one encoder, so
    the auto-encoder shares it instead of having its own. No adversarial term."""

    def __init__(self, encoder: nn.Module, generator: str = "collaborative",
                 self_reconstruction_weight: float = 1.0):
        super().__init__()
        if generator != "collaborative":
            raise ObjectiveError(f"generator must be 'collaborative'; got {generator!r}")
        channels = in_channels(encoder)
        need_modalities(channels, "missing_sequence_synthesis")
        self.encoder, self.weight = encoder, self_reconstruction_weight
        self.decoder = Decoder(encoder.feature_dim, channels, conv_dims(encoder))

    def terms(self, x: torch.Tensor, gen: torch.Generator | None = None
              ) -> dict[str, torch.Tensor]:
        """Synthesis, self-reconstruction and feature-constraint terms on a view in [0, 1]."""
        size, z = list(x.shape[2:]), standardise(x)
        dropped, k = drop_one(z, gen)
        alone = z - dropped  # only the dropped channel is left
        f_syn, f_self = feature_map(self.encoder, dropped), feature_map(self.encoder, alone)
        target = pick(x, k).float()
        synth = pick(to_unit(self.decoder(f_syn, size)), k).float()
        again = pick(to_unit(self.decoder(f_self, size)), k).float()
        return {"synthesis": (synth - target).abs().mean(),
                "self_reconstruction": (again - target).abs().mean(),
                "feature": F.mse_loss(f_syn.float(), f_self.detach().float())}

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        need_modalities(x.shape[1], "missing_sequence_synthesis")
        t = self.terms(augment(x, policy, gen), gen)
        return t["synthesis"] + self.weight * (t["self_reconstruction"] + t["feature"])


class ClipCrossModal(Objective):
    """Cross-modal contrast (Suekei et al. 2024 [68], CLIP/CLOOB between fundus and OCT of
    one eye; Taleb et al. 2021 [72]): each modality has its own encoder
    (`encoders: one_per_modality`, the only value) and linear projection to
    `projection_dim`, and a symmetric InfoNCE at `temperature` makes the two embeddings of
    one eye match and those of different eyes differ.

    What we do: the source channel group (`source_channels`, default the first half) is one
    modality and the rest the other. Each encoder gets the card's full channel count with
    the other modality's channels zeroed, and each modality its own augmented view, as two
    separately acquired images would have. The second encoder is a deep copy of the first at
    construction and trains alongside it; only the first, the source-modality encoder, is
    what the zoo stores."""

    def __init__(self, encoder: nn.Module, temperature: float = 0.07,
                 projection_dim: int = 256, encoders: str = "one_per_modality",
                 source_channels: int | None = None):
        super().__init__()
        if encoders != "one_per_modality":
            raise ObjectiveError(f"encoders must be 'one_per_modality'; got {encoders!r}")
        channels = in_channels(encoder)
        need_modalities(channels, "clip_cross_modal")
        self.encoder, self.temperature = encoder, temperature
        self.partner = copy.deepcopy(encoder)
        self.source, self.target = modality_split(channels, source_channels)
        d = encoder.feature_dim
        self.project_a = nn.Linear(d, projection_dim, bias=False)
        self.project_b = nn.Linear(d, projection_dim, bias=False)

    def embed(self, va: torch.Tensor, vb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Modality-A embeddings of `va` and modality-B ones of `vb`, images in [0, 1]."""
        za = self.project_a(self.encoder(keep_channels(standardise(va), self.source)))
        return za, self.project_b(self.partner(keep_channels(standardise(vb), self.target)))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        need_modalities(x.shape[1], "clip_cross_modal")
        return clip_loss(*self.embed(*self.views(x, policy, gen)), self.temperature)
