"""Puzzle objectives beyond the plain jigsaw (review 4.2.3-4.2.4): Rubik's cube+ (cube
order, cube rotation and cube masking, Zhu et al. [96]) and the multi-modal puzzle solved
with a Sinkhorn-normalised permutation matrix (Taleb et al. [72])."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.architectures import ViTEncoder

from .. import rng
from ..augment import Policy, augment
from .base import Objective, ObjectiveError, feature_map, mlp, standardise
from .predictive import RubiksCube, _tiles, _untile


def _spatial_dims(encoder: nn.Module) -> int:
    """2 or 3, from the MONAI constructor arguments every zoo encoder keeps."""
    kwargs = getattr(encoder, "monai_kwargs", None)
    if not kwargs or "spatial_dims" not in kwargs:
        raise ObjectiveError("cannot tell the encoder's spatial dims (need a zoo encoder)")
    return int(kwargs["spatial_dims"])


def _slot_features(encoder: nn.Module, x: torch.Tensor, grid: list[int]) -> torch.Tensor:
    """One feature per grid cell (B, T, C), row-major like `_tiles`: the CNN's last feature
    map or the ViT's token grid, average-pooled onto the grid. Unlike the encoder's global
    pooling it keeps which cube a feature belongs to."""
    if isinstance(encoder, ViTEncoder):
        tokens = encoder.tokens(x)
        fmap = tokens.transpose(1, 2).reshape(x.shape[0], tokens.shape[-1], *encoder.grid)
    else:
        fmap = feature_map(encoder, x)
    pool = F.adaptive_avg_pool2d if len(grid) == 2 else F.adaptive_avg_pool3d
    return pool(fmap, grid).flatten(2).transpose(1, 2)


class RubiksCubePlus(RubiksCube):
    """Rubik's cube+ (Zhu et al. 2020, review [96]): the 2x2x2 Rubik's cube recovery of
    `RubiksCube` (cube order from a fixed permutation set, 180-degree rotations of single
    cubes about the vertical or horizontal axis) plus cube masking: each cube is replaced
    by uniform noise in [0, 1] with probability `mask_probability`, and the network says
    which cube positions were masked. Loss = order CE + rotation BCE + mask BCE.

    Noise rather than zeros: MedMNIST3D volumes are 0/255 shape masks whose cubes are often
    empty, so a zero-filled cube would often look unmasked (an unlearnable label). The paper
    runs one Siamese branch per cube; we encode the scrambled volume once and pool the last
    feature map per cube, so each cube keeps its own feature (the encoder's global pooling
    loses which cube is which: in 20 steps on AdrenalMNIST3D the mask BCE fell 0.69 -> 0.65
    with it, 0.63 -> 0.32 with per-cube features). Order is read from all cubes' features
    together; rotation and masking by one head shared by every cube. `rotations` only
    accepts [0, 180], the paper's setting. 3D only.
    """

    def __init__(self, encoder: nn.Module, grid: list[int] | None = None,
                 permutations: int = 24, rotations: list[int] | None = None,
                 mask_probability: float = 0.3):
        grid = list(grid) if grid is not None else [2, 2, 2]
        if len(grid) != 3 or _spatial_dims(encoder) != 3:
            raise ObjectiveError("rubiks_cube_plus is a 3D objective: it needs a 3D encoder "
                                 "and a grid of 3 numbers, e.g. [2, 2, 2]")
        if min(grid) < 1 or math.prod(grid) < 2:
            raise ObjectiveError(f"grid {grid} must split the volume into at least 2 cubes")
        rotations = [0, 180] if rotations is None else list(rotations)
        if sorted(rotations) != [0, 180]:
            raise ObjectiveError(f"rotations must be [0, 180] (cubes turn by 180 degrees or "
                                 f"not at all), got {rotations}")
        if not 0.0 < mask_probability < 1.0:
            raise ObjectiveError(f"mask_probability must lie in (0, 1), got {mask_probability}")
        if permutations < 2:
            raise ObjectiveError(f"permutations must be at least 2, got {permutations}")
        super().__init__(encoder, grid, permutations)
        d = encoder.feature_dim
        # Replace the parent's heads on the global feature by per-cube ones.
        self.head = nn.Linear(d * math.prod(grid), permutations)
        self.rot_head = nn.Linear(d, 2)  # per cube: turned about the vertical / horizontal
        self.mask_head = nn.Linear(d, 1)  # per cube: masked
        self.mask_probability = float(mask_probability)

    def scramble(self, x: torch.Tensor, gen: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Permute, rotate and mask the cubes: (volume, permutation label, flips (B, T, 2)
        about the vertical / horizontal axis, masked (B, T)); flips and masks are indexed
        by the cube's position in the scrambled volume."""
        puzzle, label = self.shuffle(x, gen)
        tiles, _ = _tiles(puzzle, self.grid)
        b, t = tiles.shape[:2]
        view = (b, t, 1, 1, 1, 1)
        flips = rng.rand((b, t, 2), gen, x.device) < 0.5
        # 180 degrees about the vertical axis flips D and W; about the horizontal, D and H.
        tiles = torch.where(flips[:, :, 0].view(view), tiles.flip((3, 5)), tiles)
        tiles = torch.where(flips[:, :, 1].view(view), tiles.flip((3, 4)), tiles)
        masked = rng.rand((b, t), gen, x.device) < self.mask_probability
        noise = rng.rand(tiles.shape, gen, x.device).to(tiles.dtype)
        tiles = torch.where(masked.view(view), noise, tiles)
        return _untile(tiles, self.grid), label, flips, masked

    def terms(self, x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None
              ) -> dict[str, torch.Tensor]:
        """The three losses separately (tests and logs look at each)."""
        if x.dim() != 5:
            raise ObjectiveError("rubiks_cube_plus needs volumes (B, C, D, H, W)")
        x = augment(x, policy, gen)
        volume, label, flips, masked = self.scramble(x, gen)
        f = _slot_features(self.encoder, standardise(volume), self.grid)
        return {
            "order": F.cross_entropy(self.head(f.flatten(1)).float(), label),
            "rotation": F.binary_cross_entropy_with_logits(self.rot_head(f).float(),
                                                           flips.float()),
            "mask": F.binary_cross_entropy_with_logits(self.mask_head(f).squeeze(-1).float(),
                                                       masked.float()),
        }

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        return sum(self.terms(x, policy, gen).values())


def sinkhorn(scores: torch.Tensor, iterations: int) -> torch.Tensor:
    """Log of the doubly-stochastic matrix Sinkhorn's alternating row and column
    normalisation makes of exp(scores) (..., N, N); in log space and fp32 so that large
    scores neither overflow nor lose the small entries under bf16 autocast. The last step
    normalises columns: they sum to 1 exactly, rows to 1 up to convergence."""
    log_p = scores.float()
    for _ in range(iterations):
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
        log_p = log_p - torch.logsumexp(log_p, dim=-2, keepdim=True)
    return log_p


def permutation_nll(log_p: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the soft permutation (B, T, T) against the true permutation matrix
    M[b, i, order[b, i]] = 1: minus the mean log-probability of each tile's true position."""
    return -log_p.gather(-1, order.unsqueeze(-1)).mean()


class MultimodalPuzzle(Objective):
    """Multi-modal puzzle (Taleb et al. 2021, review [72]): every tile of a grid is taken
    from a randomly chosen channel ("modality") of the input, copied to all channels, and the
    tiles are shuffled by a random permutation. Each tile goes through the encoder on its own
    and a shared head turns its feature into scores over the T original positions (one row of
    the T x T score matrix per tile, as in Sinkhorn networks); Sinkhorn normalisation
    (`sinkhorn_iterations`, log space, fp32) makes the matrix a soft permutation, trained by
    cross-entropy against the true permutation matrix. The per-tile head makes the shuffle
    only a reordering of rows; the Sinkhorn coupling (each position claimed once) is what
    turns T position classifiers into a puzzle solver.

    The paper mixes co-registered MR sequences or modalities. Our data has none: the
    channels of an RGB image (co-registered by construction) stand in for modalities, and a
    single-channel input degrades to a single-modality Sinkhorn jigsaw (all tiles from the
    one channel). `grid` defaults to [3, 3] in 2D and [2, 2, 2] in 3D. A 2-number grid on
    a 3D encoder (the catalog's [3, 3]) is read as the in-plane grid, with 2 tiles along
    depth: [2, 3, 3], so the catalog's setting runs in both dims it lists. An encoder of
    fixed input size (ViT) sees each tile resized to that size.
    """

    def __init__(self, encoder: nn.Module, grid: list[int] | None = None,
                 sinkhorn_iterations: int = 20):
        super().__init__()
        dims = _spatial_dims(encoder)
        grid = list(grid) if grid is not None else ([3, 3] if dims == 2 else [2, 2, 2])
        if dims == 3 and len(grid) == 2:
            grid = [2, *grid]
        if len(grid) != dims:
            example = [3, 3] if dims == 2 else [2, 2, 2]
            raise ObjectiveError(f"grid {grid} has {len(grid)} numbers but the encoder is "
                                 f"{dims}D; give {dims}, e.g. {example}")
        if min(grid) < 1 or math.prod(grid) < 2:
            raise ObjectiveError(f"grid {grid} must split the image into at least 2 tiles")
        if int(sinkhorn_iterations) < 1:
            raise ObjectiveError(f"sinkhorn_iterations must be >= 1, got {sinkhorn_iterations}")
        self.encoder = encoder
        self.grid = grid
        self.iterations = int(sinkhorn_iterations)
        d = encoder.feature_dim
        self.head = mlp(d, max(64, d), math.prod(grid))

    def shuffle(self, x: torch.Tensor, gen: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tiles (B, T, C, *tile), order): slot i holds the tile from original position
        order[b, i], in one randomly chosen channel copied to all channels."""
        tiles, tile = _tiles(x, self.grid)
        b, t, c = tiles.shape[:3]
        ones = [1] * len(tile)
        if c > 1:
            chan = rng.randint(0, c, (b, t), gen, x.device)
            tiles = tiles.gather(2, chan.view(b, t, 1, *ones).expand(b, t, 1, *tile))
            tiles = tiles.expand(b, t, c, *tile)
        order = torch.argsort(rng.rand((b, t), gen, x.device), dim=1)
        return tiles.gather(1, order.view(b, t, 1, *ones).expand(b, t, c, *tile)), order

    def scores(self, tiles: torch.Tensor) -> torch.Tensor:
        """(B, T, T): row = slot of the shuffled puzzle, column = original position."""
        b, t = tiles.shape[:2]
        flat = tiles.reshape(b * t, *tiles.shape[2:])
        if not getattr(self.encoder, "size_agnostic", False):
            mode = "bilinear" if len(self.grid) == 2 else "trilinear"
            flat = F.interpolate(flat, size=list(self.encoder.img_size), mode=mode,
                                 align_corners=False)
        return self.head(self.encoder(standardise(flat))).view(b, t, t)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        x = augment(x, policy, gen)
        tiles, order = self.shuffle(x, gen)
        return permutation_nll(sinkhorn(self.scores(tiles), self.iterations), order)
