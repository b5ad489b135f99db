"""Encoder builders, keyed by architecture name: headless networks returning (B, D).

All come from MONAI so that the zoo uses the same, maintained implementations as the
rest of the medical-imaging stack. `widths` shrinks the ResNets for CPU training and for
a repository-sized zoo.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
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

    @property
    def grid(self) -> list[int]:
        """Patches per axis: the shape of the position-embedding table."""
        return [s // self.patch_size for s in self.img_size]

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


POSITION_KEY = "position_embeddings"


def resize_position_embeddings(state: Mapping[str, torch.Tensor], old_grid: Sequence[int],
                               new_grid: Sequence[int]) -> dict[str, torch.Tensor]:
    """A copy of a ViT state dict whose `*position_embeddings` tables, (1, prod(grid), D) in
    row-major patch order, are resized from `old_grid` to `new_grid` patches per axis.

    Why: a ViT declares its input size, and its learnt table has one row per patch. Running
    it at another size (a 28 px encoder fine-tuned on 128 px images) needs the table on the
    new grid. Bicubic (2D) or trilinear (3D) with aligned corners keeps the table's corners
    and, at an integer refinement (7 -> 13 = 2 x 6 + 1), every old row, so shrinking back
    gives the original table exactly. Other tensors are returned unchanged.

    Raises:
        ArchitectureError: a table whose length is not the product of `old_grid`.
    """
    old, new = [int(g) for g in old_grid], [int(g) for g in new_grid]
    if len(old) != len(new) or len(old) not in (2, 3):
        raise ArchitectureError(f"grids {old} and {new} must both be 2D or both 3D")
    out = dict(state)
    for key, table in state.items():
        if not key.endswith(POSITION_KEY) or old == new:
            continue
        if table.dim() != 3 or table.shape[1] != math.prod(old):
            raise ArchitectureError(f"{key} has shape {tuple(table.shape)}; expected "
                                    f"(1, {math.prod(old)}, D) for a {old} patch grid")
        dim = table.shape[2]
        volume = table.float().transpose(1, 2).reshape(1, dim, *old)
        mode = "bicubic" if len(old) == 2 else "trilinear"
        resized = F.interpolate(volume, size=new, mode=mode, align_corners=True)
        out[key] = resized.reshape(1, dim, -1).transpose(1, 2).to(table.dtype).contiguous()
    return out


def encoder_at_size(encoder: nn.Module, input_size: Sequence[int]) -> nn.Module:
    """The same encoder, with the same weights, able to take `input_size` images.

    CNN encoders take any size and come back as they are; a ViT is rebuilt at the new size
    with its position embeddings interpolated (`resize_position_embeddings`). The new
    size must be divisible by the ViT's patch size and within its token limit.

    Raises:
        ArchitectureError: an encoder that declares a size but is not a `ViTEncoder`, or a
            size the ViT cannot take.
    """
    if getattr(encoder, "size_agnostic", False):
        return encoder
    if not isinstance(encoder, ViTEncoder):
        raise ArchitectureError(f"{type(encoder).__name__} declares its input size and has no "
                                "rule to change it")
    if list(input_size) == encoder.img_size:
        return encoder
    kwargs = dict(encoder.monai_kwargs)
    kwargs.pop("classification")
    resized = ViTEncoder(kwargs.pop("spatial_dims"), kwargs.pop("in_channels"),
                         img_size=list(input_size), **{k: v for k, v in kwargs.items()
                                                       if k != "img_size"})
    state = resize_position_embeddings(encoder.state_dict(), encoder.grid, resized.grid)
    resized.load_state_dict(state, strict=True)
    return resized.to(next(encoder.parameters()).device).train(encoder.training)
