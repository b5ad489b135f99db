"""Encoder builders, keyed by architecture name: headless networks returning (B, D).

All come from MONAI so that the zoo uses the same, maintained implementations as the
rest of the medical-imaging stack. `widths` shrinks the ResNets for CPU training and for
a repository-sized zoo.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

MAX_VIT_TOKENS = 1024


class ArchitectureError(ValueError):
    pass


class ResNetEncoder(nn.Module):
    size_agnostic = True  # convolutions, then global average pooling

    def __init__(self, depth: int, spatial_dims: int, in_channels: int,
                 widths: list[int] | None = None, stem: str = "cifar"):
        super().__init__()
        from monai.networks.nets import ResNet

        layers = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}
        if depth not in layers:
            raise ArchitectureError(f"resnet depth must be one of {sorted(layers)}, got {depth}")
        widths = widths or [64, 128, 256, 512]
        if len(widths) != 4:
            raise ArchitectureError("widths must list 4 stage widths")
        if stem not in ("cifar", "imagenet"):
            raise ArchitectureError("stem must be 'cifar' (3x3, no pooling) or 'imagenet'")
        cifar = stem == "cifar"
        # Kept so that a model card can print the same MONAI constructor call.
        self.monai_kwargs: dict[str, Any] = dict(
            block="basic", layers=layers[depth], block_inplanes=list(widths),
            spatial_dims=spatial_dims, n_input_channels=in_channels,
            conv1_t_size=3 if cifar else 7, conv1_t_stride=1 if cifar else 2,
            no_max_pool=cifar, feed_forward=False,
        )
        self.net = ResNet(**self.monai_kwargs)
        self.feature_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ViTEncoder(nn.Module):
    """MONAI ViT without a head; the feature is the mean of the patch tokens."""

    def __init__(self, spatial_dims: int, in_channels: int, img_size: list[int],
                 patch_size: int = 4, hidden_size: int = 192, mlp_dim: int = 384,
                 num_layers: int = 6, num_heads: int = 3):
        super().__init__()
        from monai.networks.nets import ViT

        if any(s % patch_size for s in img_size):
            raise ArchitectureError(f"img_size {img_size} must be divisible by patch_size "
                                    f"{patch_size}")
        if hidden_size % num_heads:
            raise ArchitectureError("hidden_size must be divisible by num_heads")
        tokens = math.prod(s // patch_size for s in img_size)
        if tokens > MAX_VIT_TOKENS:
            # Attention memory grows with the square of the token count.
            raise ArchitectureError(f"img_size {img_size} with patch_size {patch_size} gives "
                                    f"{tokens} tokens; at most {MAX_VIT_TOKENS} (use larger "
                                    "patches)")
        self.monai_kwargs: dict[str, Any] = dict(
            in_channels=in_channels, img_size=list(img_size), patch_size=patch_size,
            hidden_size=hidden_size, mlp_dim=mlp_dim, num_layers=num_layers,
            num_heads=num_heads, classification=False, spatial_dims=spatial_dims)
        self.net = ViT(**self.monai_kwargs)
        self.feature_dim = hidden_size
        self.patch_size = patch_size
        self.img_size = list(img_size)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x).mean(dim=1)


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def build(spatial_dims: int, in_channels: int, input_size: list[int], **args: Any):
        return ResNetEncoder(depth, spatial_dims, in_channels, **args)

    return build


def _vit(spatial_dims: int, in_channels: int, input_size: list[int], **args: Any) -> nn.Module:
    return ViTEncoder(spatial_dims, in_channels, img_size=list(input_size), **args)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet10": _resnet(10),
    "resnet18": _resnet(18),
    "resnet34": _resnet(34),
    "vit": _vit,
}


def build_encoder(name: str, spatial_dims: int, in_channels: int, input_size: list[int],
                  args: dict[str, Any] | None = None) -> nn.Module:
    if name not in ARCHITECTURES:
        raise ArchitectureError(f"unknown architecture '{name}'; known: "
                                f"{', '.join(sorted(ARCHITECTURES))}")
    if len(input_size) != spatial_dims:
        raise ArchitectureError(f"input_size {input_size} has {len(input_size)} dims, "
                                f"spatial_dims is {spatial_dims}")
    try:
        return ARCHITECTURES[name](spatial_dims, in_channels, list(input_size), **(args or {}))
    except TypeError as err:
        raise ArchitectureError(f"bad arguments for {name}: {err}") from None
