"""Token-level access to MONAI's ViT, for masked modelling and JEPA."""

from __future__ import annotations

import torch
from torch import nn

from zoo.architectures import ViTEncoder

from .predictive import _tiles


def embed_patches(vit: ViTEncoder, x: torch.Tensor) -> torch.Tensor:
    """Patch embeddings without position embeddings: (B, L, D)."""
    return vit.net.patch_embedding.patch_embeddings(x).flatten(2).transpose(1, 2)


def positions(vit: ViTEncoder) -> torch.Tensor:
    return vit.net.patch_embedding.position_embeddings  # (1, L, D)


def transformer(vit: ViTEncoder, tokens: torch.Tensor) -> torch.Tensor:
    for block in vit.net.blocks:
        tokens = block(tokens)
    return vit.net.norm(tokens)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, *S) -> (B, L, C * patch**dims), patches in the same order as the ViT's."""
    grid = [s // patch for s in x.shape[2:]]
    tiles, _ = _tiles(x, grid)
    return tiles.flatten(2)


def light_transformer(width: int, depth: int) -> nn.ModuleList:
    """The small transformer of MAE's decoder and I-JEPA's predictor."""
    from monai.networks.blocks import TransformerBlock

    heads = 4 if width % 4 == 0 else 1
    return nn.ModuleList(TransformerBlock(width, width * 2, heads) for _ in range(depth))


def learned_positions(n_tokens: int, width: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(1, n_tokens, width) * 0.02)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))
