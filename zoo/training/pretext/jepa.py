"""I-JEPA (Assran et al. 2023; second seed): from a context block, predict the EMA target
encoder's latents of several target blocks. No pixels, no hand-made view invariance."""

from __future__ import annotations

import torch
from torch import nn

from .. import rng
from . import losses
from .base import EMA, Objective, need_vit, standardise
from .vitparts import (
    embed_patches,
    gather_tokens,
    learned_positions,
    light_transformer,
    positions,
    transformer,
)


def block_mask(grid: list[int], scale: tuple[float, float], gen: torch.Generator | None,
               aspect: tuple[float, float] = (0.75, 1.5)) -> torch.Tensor:
    """Boolean mask over the token grid covering one random block."""
    total = 1
    for g in grid:
        total *= g
    area = rng.uniform(*scale, gen) * total
    ratio = rng.uniform(*aspect, gen)
    sides = [area ** (1 / len(grid))] * len(grid)
    sides[0], sides[-1] = sides[0] * ratio**0.5, sides[-1] / ratio**0.5
    sides = [max(1, min(g, round(s))) for s, g in zip(sides, grid, strict=True)]
    mask = torch.zeros(grid, dtype=torch.bool)
    start = [int(rng.randint(0, g - s + 1, (1,), gen)) for g, s in
             zip(grid, sides, strict=True)]
    mask[tuple(slice(a, a + s) for a, s in zip(start, sides, strict=True))] = True
    return mask.flatten()


class IJEPA(Objective):
    def __init__(self, encoder: nn.Module, target_blocks: int = 4,
                 target_scale: tuple[float, float] = (0.15, 0.2),
                 context_scale: tuple[float, float] = (0.85, 1.0), ema_momentum: float = 0.996,
                 predictor_depth: int = 2, predictor_dim: int = 96):
        super().__init__()
        vit = need_vit(encoder)
        self.encoder, self.target = encoder, EMA(encoder, ema_momentum)
        self.blocks, self.t_scale, self.c_scale = target_blocks, target_scale, context_scale
        d = vit.feature_dim
        n_tokens = positions(vit).shape[1]
        self.to_pred = nn.Linear(d, predictor_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_dim))
        self.pred_pos = learned_positions(n_tokens, predictor_dim)
        self.predictor = light_transformer(predictor_dim, predictor_depth)
        self.from_pred = nn.Linear(predictor_dim, d)
        self.grid = [s // vit.patch_size for s in vit.img_size]

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        vit = self.encoder
        x = standardise(x)  # JEPA uses no augmentation beyond the masking itself
        b = x.shape[0]
        with torch.no_grad():
            tv = self.target.at(x.device)
            targets = transformer(tv, embed_patches(tv, x) + positions(tv))
        # One mask layout per batch keeps token counts equal across samples.
        t_masks = [block_mask(self.grid, self.t_scale, gen) for _ in range(self.blocks)]
        context = block_mask(self.grid, self.c_scale, gen)
        for m in t_masks:
            context &= ~m
        if not context.any():
            context = ~t_masks[0]
        c_idx = torch.nonzero(context).flatten().to(x.device).expand(b, -1)
        tokens = embed_patches(vit, x) + positions(vit)
        ctx = transformer(vit, gather_tokens(tokens, c_idx))
        loss = x.new_zeros(())
        for m in t_masks:
            t_idx = torch.nonzero(m).flatten().to(x.device).expand(b, -1)
            seq = torch.cat([self.to_pred(ctx) + gather_tokens(self.pred_pos.expand(b, -1, -1),
                                                               c_idx),
                             self.mask_token + gather_tokens(self.pred_pos.expand(b, -1, -1),
                                                             t_idx)], 1)
            for block in self.predictor:
                seq = block(seq)
            pred = self.from_pred(seq[:, ctx.shape[1]:])
            loss = loss + losses.latent_regression(pred, gather_tokens(targets, t_idx))
        return loss / len(t_masks)

    def after_step(self) -> None:
        self.target.update(self.encoder)
