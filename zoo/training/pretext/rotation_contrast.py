"""Rotation-oriented collaborative SSL (Li et al. 2021, review [40]): one feature vector,
split into a rotation-aware half that tells which rotation was applied and a
rotation-invariant half that two differently rotated views must agree on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from ..augment import Policy, augment
from . import losses
from .base import Objective, ObjectiveError, mlp, standardise


def _turns(rotations: Sequence[float]) -> list[int]:
    """Degrees -> quarter turns; multiples of 90, at least two distinct modulo 360."""
    if isinstance(rotations, (str, bytes)) or not isinstance(rotations, Sequence):
        raise ObjectiveError(f"rotations must be a list of degrees, got {rotations!r}")
    bad = [r for r in rotations if isinstance(r, bool) or not isinstance(r, (int, float))
           or float(r) % 90 != 0]
    if bad:
        raise ObjectiveError(f"rotations must be multiples of 90 degrees (0, 90, 180, 270), "
                             f"got {bad}")
    turns = [int(float(r) // 90) % 4 for r in rotations]
    if len(set(turns)) != len(turns) or len(turns) < 2:
        raise ObjectiveError(f"rotations must list at least two distinct rotations modulo "
                             f"360 degrees, got {list(rotations)}")
    return turns


def _spatial_dims(encoder: nn.Module) -> int | None:
    kwargs = getattr(encoder, "monai_kwargs", None)
    return kwargs.get("spatial_dims") if isinstance(kwargs, dict) else None


class RotationContrast(Objective):
    """Li et al. [40]: the encoder's feature is cut in two. The first half (rotation-aware,
    for orientation-bound anatomy such as vessels and the optic disc) feeds a linear
    classifier of which of `rotations` was applied; the second half (rotation-invariant)
    feeds a projector, and NT-Xent pulls together two augmented views of an image that are
    rotated differently. Both halves learn from one encoder, so the split is what keeps the
    invariance from erasing the orientation cues the classifier needs.

    The paper's contrastive branch uses its own instance-discrimination set-up over several
    rotated views; here it is SimCLR's in-batch NT-Xent over two views, and the two terms
    are summed with equal weight. 2D only: a quarter turn of a volume needs an axis the
    catalog does not name."""

    def __init__(self, encoder: nn.Module, rotations: Sequence[float] = (0, 90, 180, 270),
                 temperature: float = 0.2, projection_dim: int = 128):
        super().__init__()
        if _spatial_dims(encoder) == 3:
            raise ObjectiveError("rotation_contrastive is 2D only (in-plane quarter turns); "
                                 "got a 3D encoder")
        if temperature <= 0:
            raise ObjectiveError(f"temperature must be > 0, got {temperature}")
        d = encoder.feature_dim
        if d < 2:
            raise ObjectiveError("rotation_contrastive splits the feature: it needs >= 2")
        self.encoder, self.temperature = encoder, temperature
        self.register_buffer("turns", torch.tensor(_turns(rotations)))
        self.aware = d // 2
        self.rotation_head = nn.Linear(self.aware, len(self.turns))
        self.projector = mlp(d - self.aware, d - self.aware, projection_dim)

    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rotation-aware, rotation-invariant) halves of features (B, D); disjoint."""
        return h[:, :self.aware], h[:, self.aware:]

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation logits from the aware half, projection from the invariant half."""
        aware, invariant = self.split(h)
        return self.rotation_head(aware), self.projector(invariant)

    def rotate(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Turn image i by `rotations[label[i]]`: torch.rot90 over (H, W)."""
        k = self.turns[label].tolist()
        return torch.stack([torch.rot90(img, t, dims=(-2, -1)) for img, t in zip(x, k,
                                                                                  strict=True)])

    def labels(self, n: int, gen: torch.Generator | None, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation indices of the two views, always different from each other."""
        r = len(self.turns)
        first = rng.randint(0, r, (n,), gen, device)
        return first, (first + rng.randint(1, r, (n,), gen, device)) % r

    def terms(self, x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None
              ) -> dict[str, torch.Tensor]:
        """Rotation cross entropy (both views, averaged) and the invariant half's NT-Xent."""
        if x.dim() != 4:
            raise ObjectiveError("rotation_contrastive is 2D only: images (B, C, H, W)")
        if x.shape[-1] != x.shape[-2] and any(t % 2 for t in self.turns.tolist()):
            raise ObjectiveError("quarter turns need square images")
        # Augmented rotations or a vertical flip (a flip and a half turn) would blur labels.
        safe = Policy({o for o in policy.ops if "rotation" not in o and o != "vertical_flip"},
                      policy.crop_scale)
        l1, l2 = self.labels(x.shape[0], gen, x.device)
        r1 = self.rotate(augment(x, safe, gen), l1)
        r2 = self.rotate(augment(x, safe, gen), l2)
        (c1, z1), (c2, z2) = (self.heads(self.encoder(standardise(r))) for r in (r1, r2))
        return {"rotation": (F.cross_entropy(c1.float(), l1)
                             + F.cross_entropy(c2.float(), l2)) / 2,
                "contrast": losses.nt_xent(z1.float(), z2.float(), self.temperature)}

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        t = self.terms(x, policy, gen)
        return t["rotation"] + t["contrast"]
