"""Segmentation task models: a zoo encoder whose stages feed a U-Net decoder.

The decoder is MONAI's: each level is a `UnetUpBlock` (transposed convolution, then two
conv-norm-act layers on the upsampled map concatenated with the skip), as in DynUNet and
nnU-Net (Isensee et al. 2021, arXiv:1809.10486), and a `UnetOutBlock` gives class logits.

- ResNet encoders (MONAI `ResNet` in `ResNetEncoder.net`) skip from the stem and every
  layer at a distinct scale. With the ImageNet stem (stride 4 before layer1) a small
  convolution on the input (`UnetrBasicBlock`) adds the full-resolution skip.
- ViT encoders are decoded UNETR-style (Hatamizadeh et al. 2022, arXiv:2103.10504): the
  token grid is the bottleneck, earlier transformer layers are reshaped to the grid and
  brought to finer scales by transposed convolutions (MONAI `UpSample`), and the input
  convolution gives the full-resolution skip. Supported rather than refused because the
  rules recommend masked image modelling (SimMIM, MAE: ViTs) for dense tasks.

Normalisation is inside the module, as in `Classifier`: callers (and the ONNX graph) send
images in [0, 1] and get softmax probabilities at the input's resolution. CNN encoders
take any input size: the input is zero-padded (after normalisation, so with the mean
intensity) at the end of each axis to a multiple of the total stride (`divisor`) and the
output cropped back. A ViT takes any size up to the one it was built at (`max_size`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import ResNetEncoder, ViTEncoder, build_encoder, encoder_at_size
from .cards import EncoderCard

DECODER_NORM = "instance"  # nnU-Net's choice: batches of 2-16 are too small for batch norm
FEATURE_SIZE = 16  # channels at full resolution when the encoder gives none there


class SegmentationError(ValueError):
    pass


@dataclass(frozen=True)
class Level:
    """One skip (or the bottleneck): its channels and its stride from the input."""

    channels: int
    stride: int


def resnet_levels(encoder: ResNetEncoder) -> list[Level]:
    """The distinct scales a zoo ResNet passes through, shallow to deep; a stem output at
    layer1's scale (CIFAR stem) is left out, layer1 already carries it."""
    kwargs = encoder.monai_kwargs
    widths, stem = kwargs["block_inplanes"], int(kwargs["conv1_t_stride"])
    pooled = not kwargs["no_max_pool"]
    levels = [Level(FEATURE_SIZE, 1)] if stem > 1 else []
    if pooled:
        levels.append(Level(widths[0], stem))
    first = stem * (2 if pooled else 1)
    levels += [Level(w, first * 2**i) for i, w in enumerate(widths)]
    return levels


def vit_scales(patch_size: int) -> list[int]:
    """Strides from the token grid down to 1, dividing by the smallest prime factor each
    time: 16 -> [16, 8, 4, 2, 1], 7 -> [7, 1], 6 -> [6, 3, 1]."""
    scales = [patch_size]
    while scales[-1] > 1:
        s = scales[-1]
        factor = next(f for f in range(2, s + 1) if s % f == 0)
        scales.append(s // factor)
    return scales


def vit_levels(encoder: ViTEncoder) -> list[Level]:
    """Full resolution, then each intermediate scale, then the token grid."""
    if encoder.patch_size < 2:
        raise SegmentationError("a ViT with 1-pixel patches has no coarser scale to decode")
    scales = vit_scales(encoder.patch_size)[::-1]  # 1, ..., patch_size
    return ([Level(FEATURE_SIZE * s, s) for s in scales[:-1]]
            + [Level(encoder.feature_dim, scales[-1])])


def vit_layers(num_layers: int, intermediate: int) -> list[int]:
    """Transformer layers feeding the intermediate scales, finest first: evenly spaced, the
    shallower layers for the finer scales (UNETR takes layers 3, 6 and 9 of 12)."""
    return [round(num_layers * (i + 1) / (intermediate + 1)) - 1 for i in range(intermediate)]


class Segmenter(nn.Module):
    """encoder stages -> U-Net decoder -> per-class softmax, on normalised input."""

    def __init__(self, encoder: nn.Module, classes: int, mean: list[float],
                 std: list[float], spatial_dims: int):
        super().__init__()
        if classes < 2:
            raise SegmentationError("a segmenter needs at least 2 classes (background first)")
        if isinstance(encoder, ResNetEncoder):
            levels = resnet_levels(encoder)
        elif isinstance(encoder, ViTEncoder):
            levels = vit_levels(encoder)
        else:
            raise SegmentationError(f"no segmentation decoder for {type(encoder).__name__}; "
                                    "supported: ResNetEncoder, ViTEncoder")
        self.encoder = encoder
        self.spatial_dims, self.classes, self.levels = spatial_dims, classes, levels
        shape = (1, -1, *([1] * spatial_dims))
        self.register_buffer("mean", torch.tensor(mean).reshape(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std).reshape(shape), persistent=False)
        self.size_agnostic = bool(getattr(encoder, "size_agnostic", False))
        self.feature_dim = encoder.feature_dim
        self.divisor = levels[-1].stride
        self.max_size = None if self.size_agnostic else list(encoder.img_size)
        self.skips = self._skip_modules(encoder, levels)
        self.decoder = self._decoder(levels)
        from monai.networks.blocks import UnetOutBlock

        self.head = UnetOutBlock(spatial_dims, levels[0].channels, classes)

    def _skip_modules(self, encoder: nn.Module, levels: list[Level]) -> nn.ModuleDict:
        """Trainable parts that make skips the encoder does not: the input convolution and,
        for a ViT, the projections of intermediate layers to finer scales."""
        from monai.networks.blocks import UnetrBasicBlock, UpSample

        dims, modules = self.spatial_dims, nn.ModuleDict()
        if isinstance(encoder, ViTEncoder) or encoder.monai_kwargs["conv1_t_stride"] > 1:
            modules["input"] = UnetrBasicBlock(dims, in_channels(encoder), levels[0].channels,
                                               kernel_size=3, stride=1, norm_name=DECODER_NORM,
                                               res_block=True)
        if isinstance(encoder, ViTEncoder):
            grid = levels[-1].stride
            modules["tokens"] = nn.ModuleList(
                UpSample(dims, encoder.feature_dim, level.channels, scale_factor=grid //
                         level.stride, mode="deconv")
                for level in levels[1:-1])
        return modules

    def _decoder(self, levels: list[Level]) -> nn.ModuleList:
        """One up block per skip, deepest first."""
        from monai.networks.blocks import UnetUpBlock

        blocks = []
        for deep, skip in zip(levels[:0:-1], levels[-2::-1], strict=True):
            blocks.append(UnetUpBlock(self.spatial_dims, deep.channels, skip.channels,
                                      kernel_size=3, stride=1,
                                      upsample_kernel_size=deep.stride // skip.stride,
                                      norm_name=DECODER_NORM))
        return nn.ModuleList(blocks)

    def _padding(self, size: Sequence[int]) -> list[int]:
        """Zeros to add at the end of each axis (F.pad order: last axis first)."""
        if self.max_size is not None:
            if any(s > m for s, m in zip(size, self.max_size, strict=True)):
                raise SegmentationError(f"input {list(size)} is larger than {self.max_size}, "
                                        "the size this ViT was built at")
            extra = [m - s for s, m in zip(size, self.max_size, strict=True)]
        else:
            extra = [(-s) % self.divisor for s in size]
        return [p for e in reversed(extra) for p in (0, e)]

    def _resnet_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.encoder.net
        out = [self.skips["input"](x)] if "input" in self.skips else []
        h = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            out.append(h)
            h = net.maxpool(h)
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            h = layer(h)
            out.append(h)
        return out

    def _vit_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens, hidden = self.encoder.net(x)
        grid = [s // self.encoder.patch_size for s in x.shape[2:]]

        def as_map(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)

        picks = vit_layers(len(hidden), len(self.skips["tokens"]))
        finer = [up(as_map(hidden[i])) for up, i in zip(self.skips["tokens"], picks,
                                                          strict=True)]
        return [self.skips["input"](x), *finer, as_map(tokens)]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores before the softmax, at the input's resolution (training uses these)."""
        size = x.shape[2:]
        h = F.pad((x - self.mean) / self.std, self._padding(size))
        if isinstance(self.encoder, ViTEncoder):
            features = self._vit_features(h)
        else:
            features = self._resnet_features(h)
        y = features[-1]
        for block, skip in zip(self.decoder, features[-2::-1], strict=True):
            y = block(y, skip)
        y = self.head(y)
        return y[(..., *(slice(0, s) for s in size))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


def vit_build_size(input_size: Sequence[int], patch_size: int) -> list[int]:
    """The size a ViT is built at to take `input_size` images: rounded up to whole patches."""
    return [math.ceil(s / patch_size) * patch_size for s in input_size]


def segmenter_from_encoder(encoder: nn.Module, classes: int, input_size: Sequence[int],
                           mean: list[float], std: list[float]) -> Segmenter:
    """A fresh decoder on a (zoo) encoder, for images or patches of `input_size`.

    A ViT built at another size (every zoo ViT is declared at 28 px) is rebuilt at
    `input_size`, rounded up to whole patches, with its position embeddings interpolated;
    CNN encoders are used as they are."""
    dims = len(input_size)
    if isinstance(encoder, ViTEncoder):
        encoder = encoder_at_size(encoder, vit_build_size(input_size, encoder.patch_size))
    channels = in_channels(encoder)
    return Segmenter(encoder, classes, per_channel(mean, channels),
                     per_channel(std, channels), dims)


def in_channels(encoder: nn.Module) -> int:
    kwargs = encoder.monai_kwargs  # ResNet: n_input_channels; ViT: in_channels
    return int(kwargs.get("n_input_channels", kwargs.get("in_channels")))


def per_channel(values: list[float], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values)


def build_segmenter(card: EncoderCard, encoder: nn.Module | None = None) -> Segmenter:
    """The segmentation task model a card describes (fresh weights unless an encoder is
    given); the card's `input_size` is the size it was trained at.

    Raises:
        SegmentationError: a card that is not a segmentation task model.
    """
    if card.task is None or card.task.kind != "segmentation":
        raise SegmentationError(f"{card.name} is not a segmentation task model")
    arch = card.architecture
    if encoder is None:
        size = list(card.input_size)
        if arch.name == "vit":
            size = vit_build_size(size, int(arch.args.get("patch_size", 4)))
        encoder = build_encoder(arch.name, card.spatial_dims, card.in_channels, size, arch.args)
    norm = card.normalization
    return Segmenter(encoder, len(card.task.classes), per_channel(norm.mean, card.in_channels),
                     per_channel(norm.std, card.in_channels), card.spatial_dims)
