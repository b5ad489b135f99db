"""Predictive objectives (review 4.2.3): rotation prediction, jigsaw (2D) and Rubik's cube
recovery (3D: 2x2x2 sub-volumes, permutation plus 180-degree flips of single cubes)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from ..augment import Policy, augment
from .base import Objective, ObjectiveError, standardise


def permutation_set(n_items: int, count: int, seed: int = 0) -> torch.Tensor:
    """A fixed set of permutations, the identity first, far apart in Hamming distance
    (greedy max-min selection, as in Noroozi & Favaro [58])."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.stack([torch.randperm(n_items, generator=gen)
                        for _ in range(max(count * 20, 200))])
    chosen = [torch.arange(n_items)]
    # Each candidate's distance to its nearest chosen permutation, kept up to date as one
    # is added: O(pool) per pick instead of rescanning every chosen one (100 picks of 8
    # items took minutes before, and the catalog asks for 100).
    nearest = (pool != chosen[0]).sum(1)
    while len(chosen) < count:
        chosen.append(pool[int(nearest.argmax())])
        nearest = torch.minimum(nearest, (pool != chosen[-1]).sum(1))
    return torch.stack(chosen)


class RotationPrediction(Objective):
    """Gidaris et al. 2018 (review [22]): classify which of four in-plane rotations was
    applied. Meaningful only with a canonical orientation (the rules say so)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, 4)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        safe = Policy({o for o in policy.ops if "rotation" not in o and o != "vertical_flip"},
                      policy.crop_scale)
        x = augment(x, safe, gen)
        k = rng.randint(0, 4, (x.shape[0],), gen, x.device)
        rotated = torch.stack([torch.rot90(img, int(r), dims=(-2, -1))
                               for img, r in zip(x, k, strict=True)])
        return F.cross_entropy(self.head(self.encoder(standardise(rotated))), k)


def _tiles(x: torch.Tensor, grid: list[int]) -> tuple[torch.Tensor, list[int]]:
    """(B, C, *S) -> (B, T, C, *tile) with T = prod(grid); cropped to a multiple of grid."""
    dims = x.dim() - 2
    size = [s // g * g for s, g in zip(x.shape[2:], grid, strict=True)]
    x = x[(..., *[slice(0, s) for s in size])]
    tile = [s // g for s, g in zip(size, grid, strict=True)]
    b, c = x.shape[:2]
    shape = [b, c]
    for g, t in zip(grid, tile, strict=True):
        shape += [g, t]
    x = x.reshape(shape)
    order = [0] + [2 + 2 * i for i in range(dims)] + [1] + [3 + 2 * i for i in range(dims)]
    return x.permute(order).reshape(b, -1, c, *tile), tile


def _untile(tiles: torch.Tensor, grid: list[int]) -> torch.Tensor:
    b, _, c, *tile = tiles.shape
    dims = len(grid)
    x = tiles.reshape(b, *grid, c, *tile)
    order = [0, dims + 1]
    for i in range(dims):
        order += [1 + i, dims + 2 + i]
    return x.permute(order).reshape(b, c, *[g * t for g, t in zip(grid, tile, strict=True)])


class Jigsaw(Objective):
    """Shuffle a grid of tiles with one of P fixed permutations and classify which
    (Noroozi & Favaro [58]; knee MRI [48]). 2D: 3x3 tiles by default."""

    def __init__(self, encoder: nn.Module, grid: list[int] | None = None, permutations: int = 64):
        super().__init__()
        self.encoder = encoder
        self.grid = grid or [3, 3]
        self.register_buffer("perms", permutation_set(
            int(torch.tensor(self.grid).prod()), permutations))
        self.head = nn.Linear(encoder.feature_dim, permutations)

    def shuffle(self, x: torch.Tensor, gen: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        tiles, _ = _tiles(x, self.grid)
        label = rng.randint(0, len(self.perms), (x.shape[0],), gen, x.device)
        idx = self.perms[label]
        shuffled = torch.gather(tiles, 1, idx.view(*idx.shape, *([1] * (tiles.dim() - 2)))
                                .expand_as(tiles))
        return _untile(shuffled, self.grid), label

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        x = augment(x, policy, gen)
        puzzle, label = self.shuffle(x, gen)
        return F.cross_entropy(self.head(self.encoder(standardise(puzzle))), label)


class RubiksCube(Jigsaw):
    """Rubik's cube recovery (Zhuang et al. [97]; Rubik's cube+ [96]): permute the 2x2x2
    sub-cubes and flip some by 180 degrees about the horizontal or vertical axis; predict
    the permutation and, per cube, whether it was flipped about each axis."""

    def __init__(self, encoder: nn.Module, grid: list[int] | None = None, permutations: int = 24):
        grid = grid or [2, 2, 2]
        if len(grid) != 3:
            raise ObjectiveError("rubiks_cube is a 3D objective")
        super().__init__(encoder, grid, permutations)
        cubes = 8
        self.rot_head = nn.Linear(encoder.feature_dim, cubes * 2)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        if x.dim() != 5:
            raise ObjectiveError("rubiks_cube needs volumes (B, C, D, H, W)")
        x = augment(x, policy, gen)
        tiles, _ = _tiles(x, self.grid)
        b, t = tiles.shape[:2]
        label = rng.randint(0, len(self.perms), (b,), gen, x.device)
        idx = self.perms[label]
        tiles = torch.gather(tiles, 1, idx.view(b, t, 1, 1, 1, 1).expand_as(tiles))
        flips = rng.rand((b, t, 2), gen, x.device) < 0.5
        # 180 degrees about the vertical axis flips D and W; about the horizontal, D and H.
        about_v = torch.flip(tiles, dims=(3, 5))
        tiles = torch.where(flips[:, :, 0].view(b, t, 1, 1, 1, 1), about_v, tiles)
        about_h = torch.flip(tiles, dims=(3, 4))
        tiles = torch.where(flips[:, :, 1].view(b, t, 1, 1, 1, 1), about_h, tiles)
        feats = self.encoder(standardise(_untile(tiles, self.grid)))
        return F.cross_entropy(self.head(feats), label) + F.binary_cross_entropy_with_logits(
            self.rot_head(feats), flips.reshape(b, -1).float())


def all_permutations(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.permutations(range(n))))
