"""Shared pieces of the objectives: feature maps, heads, decoder, EMA, views."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from zoo.architectures import ResNetEncoder, ViTEncoder

from ..augment import Policy, augment


class ObjectiveError(ValueError):
    pass


def stage_maps(encoder: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of the four residual stages of a ResNet encoder, shallow to deep."""
    if not isinstance(encoder, ResNetEncoder):
        raise ObjectiveError("this objective needs a convolutional (resnet) encoder")
    net = encoder.net
    x = net.act(net.bn1(net.conv1(x)))
    if not net.no_max_pool:
        x = net.maxpool(x)
    maps = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        maps.append(x)
    return maps


def feature_map(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last convolutional feature map (B, C, *s) of a ResNet encoder."""
    return stage_maps(encoder, x)[-1]


def need_vit(encoder: nn.Module) -> ViTEncoder:
    if not isinstance(encoder, ViTEncoder):
        raise ObjectiveError("this objective needs a vit encoder")
    return encoder


def mlp(dim_in: int, hidden: int, dim_out: int, last_bn: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden),
                               nn.ReLU(inplace=True), nn.Linear(hidden, dim_out)]
    if last_bn:
        layers.append(nn.BatchNorm1d(dim_out, affine=False))
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """Upsample a ResNet feature map back to the input size (restoration objectives)."""

    def __init__(self, channels_in: int, channels_out: int, dims: int, width: int | None = None):
        super().__init__()
        # 3x3x3 convolutions at full resolution cost 27x per channel pair: keep 3D narrow.
        width = width or (64 if dims == 2 else 16)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.dims = dims
        self.blocks = nn.ModuleList()
        c = channels_in
        for _ in range(3):
            self.blocks.append(nn.Sequential(conv(c, width, 3, padding=1), norm(width),
                                             nn.ReLU(inplace=True)))
            c = width
        self.out = conv(width, channels_out, 1)

    def forward(self, f: torch.Tensor, size: list[int]) -> torch.Tensor:
        mode = "bilinear" if self.dims == 2 else "trilinear"
        for block in self.blocks:
            f = block(F.interpolate(f, scale_factor=2, mode=mode, align_corners=False))
        return self.out(F.interpolate(f, size=size, mode=mode, align_corners=False))


class EMA:
    """A momentum copy of a module (BYOL, MoCo, DINO, I-JEPA targets)."""

    def __init__(self, module: nn.Module, momentum: float):
        self.module = copy.deepcopy(module).requires_grad_(False)
        self.momentum = momentum

    def at(self, device: torch.device) -> nn.Module:
        """The target, on `device`. It is deliberately not a registered submodule (its
        weights must reach neither the optimiser nor the state dict), so moving the
        objective does not move it: every use goes through here."""
        return self.module.to(device)

    @torch.no_grad()
    def update(self, online: nn.Module) -> None:
        for t, o in zip(self.module.parameters(), online.parameters(), strict=True):
            t.mul_(self.momentum).add_(o.detach(), alpha=1 - self.momentum)
        for t, o in zip(self.module.buffers(), online.buffers(), strict=True):
            t.copy_(o)


class Objective(nn.Module):
    """Base class: subclasses set `self.encoder` and implement `loss`."""

    encoder: nn.Module
    needs_groups = False

    def loss(self, x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None,
             groups: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Momentum updates after the optimiser step; most objectives have none."""

    @staticmethod
    def views(x: torch.Tensor, policy: Policy, gen: torch.Generator | None,
              n: int = 2) -> list[torch.Tensor]:
        return [augment(x, policy, gen) for _ in range(n)]


def standardise(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images to the zero-centred range the encoders see (mean 0.5, std 0.5)."""
    return (x - 0.5) / 0.5
