"""Token-level access to MONAI's ViT, for masked modelling and JEPA."""

from __future__ import annotations

import torch

from ..architectures import ViTEncoder
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


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))
