"""MSN, Masked Siamese Networks (Assran et al. 2022; endoscopy video, review [31]): a
masked anchor view predicts the prototype assignment of an unmasked target view."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from .base import EMA, Objective, ObjectiveError, mlp, need_vit, standardise
from .vitparts import embed_patches, gather_tokens, positions, transformer


def msn_loss(anchor: torch.Tensor, target: torch.Tensor, prototypes: torch.Tensor,
             anchor_temperature: float = 0.1, target_temperature: float = 0.025,
             me_max_weight: float = 1.0) -> torch.Tensor:
    """Cross entropy of the target's sharpened prototype distribution against the
    anchor's, plus `me_max_weight` times (log K - entropy of the batch-mean anchor
    distribution), which is zero when all K prototypes are used equally and stops the
    collapse onto a few. Assignments are softmaxed cosine similarities; the target side
    carries no gradient. anchor, target: (B, D); prototypes: (K, D). Computed in fp32
    with autocast off: bf16 cosines divided by 0.025 would move logits by whole units."""
    with torch.autocast(anchor.device.type, enabled=False):
        return _msn_loss(anchor.float(), target.float(), prototypes.float(), anchor_temperature,
                         target_temperature, me_max_weight)


def _msn_loss(anchor: torch.Tensor, target: torch.Tensor, prototypes: torch.Tensor,
              anchor_temperature: float, target_temperature: float,
              me_max_weight: float) -> torch.Tensor:
    q = F.normalize(prototypes, dim=1)
    log_p = F.log_softmax(F.normalize(anchor, dim=1) @ q.t() / anchor_temperature, 1)
    with torch.no_grad():
        t = F.normalize(target.detach(), dim=1) @ q.t()
        p_target = F.softmax(t / target_temperature, dim=1)
    ce = -(p_target * log_p).sum(1).mean()
    mean_p = log_p.exp().mean(0)
    me_max = math.log(q.shape[0]) + (mean_p * mean_p.clamp(min=1e-12).log()).sum()
    return ce + me_max_weight * me_max


def visible_tokens(b: int, n: int, mask_ratio: float, gen: torch.Generator | None,
                   device: torch.device) -> torch.Tensor:
    """(B, keep) indices of the tokens each sample keeps: an independent random subset of
    round(n * (1 - mask_ratio)) tokens (at least one), as MSN's random masking."""
    keep = max(1, int(round(n * (1 - mask_ratio))))
    return torch.argsort(rng.rand((b, n), gen, device), dim=1)[:, :keep]


class MSN(Objective):
    """Assran et al. 2022. The anchor view loses a `mask_ratio` share of its patch tokens
    (random masking; only the visible ones are encoded, as in MAE); the other view goes
    whole through the EMA target (encoder + projector). Both pooled representations are
    softly assigned to `prototypes` learnable prototypes and the anchor learns the
    target's sharpened assignment, with mean-entropy maximisation (me-max).

    Differences from the paper: MONAI's ViT has no [CLS] token, so the representation is
    the mean of the encoded tokens (visible ones for the anchor), the same pooling the
    encoder's `forward` gives downstream; the paper's extra unmasked focal (small-crop)
    anchor views are left out to keep a step to two encoder passes, and the projector is
    the repository's two-layer MLP (the paper's has three, 2048 wide). `patch_size` (ViT-B/16
    in the paper) is the encoder card's choice, not the objective's: it is accepted and
    checked to be a positive integer, and the encoder's own patch size rules (tiny inputs
    such as 28 pixels cannot take 16-pixel patches). The review used MSN on endoscopy
    video; what runs here is a 2D ViT on frames (a batch of images), and on (B, C, D, H,
    W) input a 3D ViT that treats the clip as a volume of spatio-temporal patches."""

    def __init__(self, encoder: nn.Module, mask_ratio: float = 0.3, prototypes: int = 1024,
                 ema_momentum: float = 0.996, patch_size: int = 16, projection_dim: int = 256,
                 anchor_temperature: float = 0.1, target_temperature: float = 0.025,
                 me_max_weight: float = 1.0):
        super().__init__()
        vit = need_vit(encoder)
        if not 0 <= mask_ratio < 1:
            raise ObjectiveError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
        if isinstance(prototypes, bool) or not isinstance(prototypes, int) or prototypes < 2:
            raise ObjectiveError(f"prototypes must be an integer of at least 2, got "
                                 f"{prototypes!r}")
        if not 0 <= ema_momentum <= 1:
            raise ObjectiveError(f"ema_momentum must lie in [0, 1], got {ema_momentum}")
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ObjectiveError(f"patch_size must be a positive integer, got {patch_size!r}")
        self.encoder, self.mask_ratio = encoder, float(mask_ratio)
        self.requested_patch_size, self.patch_size = patch_size, vit.patch_size
        self.t_anchor, self.t_target = anchor_temperature, target_temperature
        self.me_max_weight = me_max_weight
        d = vit.feature_dim
        self.projector = mlp(d, 2 * d, projection_dim)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(prototypes, projection_dim), dim=1))
        self.target = EMA(nn.Sequential(encoder, self.projector), ema_momentum)

    def anchor(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Projected mean of the visible tokens of a randomly masked view."""
        vit = self.encoder
        tokens = embed_patches(vit, x) + positions(vit)
        visible = visible_tokens(tokens.shape[0], tokens.shape[1], self.mask_ratio, gen,
                                 x.device)
        return self.projector(transformer(vit, gather_tokens(tokens, visible)).mean(1))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        v_anchor, v_target = (standardise(v) for v in self.views(x, policy, gen))
        z = self.anchor(v_anchor, gen)
        with torch.no_grad():
            z_target = self.target.at(v_target.device)(v_target)
        return msn_loss(z, z_target, self.prototypes, self.t_anchor, self.t_target,
                        self.me_max_weight)

    def after_step(self) -> None:
        self.target.update(nn.Sequential(self.encoder, self.projector))
