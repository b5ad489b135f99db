"""Non-contrastive joint-embedding objectives (review 4.2.1, 4.2.2): BYOL, SimSiam, DINO,
Barlow Twins."""

from __future__ import annotations

import torch
from torch import nn

from . import losses
from .base import EMA, Objective, mlp, standardise


class BYOL(Objective):
    """Grill et al. 2020: predict the EMA target's projection of the other view."""

    def __init__(self, encoder: nn.Module, ema_momentum: float = 0.99, projection_dim: int = 128,
                 predictor_hidden: int = 512):
        super().__init__()
        self.encoder = encoder
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim)
        self.predictor = mlp(projection_dim, predictor_hidden, projection_dim)
        self.target = EMA(nn.Sequential(encoder, self.projector), ema_momentum)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        v1, v2 = (standardise(v) for v in self.views(x, policy, gen))
        p1 = self.predictor(self.projector(self.encoder(v1)))
        p2 = self.predictor(self.projector(self.encoder(v2)))
        with torch.no_grad():
            target = self.target.at(v1.device)
            z1, z2 = target(v1), target(v2)
        return (losses.byol_loss(p1, z2) + losses.byol_loss(p2, z1)) / 2

    def after_step(self) -> None:
        self.target.update(nn.Sequential(self.encoder, self.projector))


class SimSiam(Objective):
    """Chen & He 2021; for histopathology segmentation, review [79]. BYOL without the
    momentum target: each view's prediction chases the other view's projection held fixed
    by a stop-gradient, which alone prevents collapse, so there is no second encoder to
    keep and no negatives, hence small batches suffice. As in the paper, the projector ends
    in a BatchNorm and the predictor is a bottleneck (`predictor_hidden` a quarter of
    `projection_dim` by default)."""

    def __init__(self, encoder: nn.Module, predictor_hidden: int = 512,
                 projection_dim: int = 2048):
        super().__init__()
        self.encoder = encoder
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim, last_bn=True)
        self.predictor = mlp(projection_dim, predictor_hidden, projection_dim)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        z1, z2 = (self.projector(self.encoder(standardise(v)))
                  for v in self.views(x, policy, gen))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return (losses.negative_cosine(p1, z2) + losses.negative_cosine(p2, z1)) / 2


class DINO(Objective):
    """Caron et al. 2021 (review [52, 32, 55]): self-distillation with a centred, sharpened
    EMA teacher; two global views, cross-view targets."""

    def __init__(self, encoder: nn.Module, output_dim: int = 1024,
                 teacher_temperature: float = 0.04,
                 student_temperature: float = 0.1, ema_momentum: float = 0.996,
                 center_momentum: float = 0.9):
        super().__init__()
        self.encoder = encoder
        d = encoder.feature_dim
        self.head = mlp(d, 2 * d, output_dim)
        self.teacher = EMA(nn.Sequential(encoder, self.head), ema_momentum)
        self.t_s, self.t_t, self.center_momentum = (student_temperature, teacher_temperature,
                                                    center_momentum)
        self.register_buffer("center", torch.zeros(output_dim))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        v1, v2 = (standardise(v) for v in self.views(x, policy, gen))
        s1, s2 = self.head(self.encoder(v1)), self.head(self.encoder(v2))
        with torch.no_grad():
            teacher = self.teacher.at(v1.device)
            t1, t2 = teacher(v1), teacher(v2)
        loss = (losses.dino_loss(s1, t2, self.center, self.t_s, self.t_t)
                + losses.dino_loss(s2, t1, self.center, self.t_s, self.t_t)) / 2
        with torch.no_grad():
            batch_center = torch.cat([t1, t2]).mean(0)
            self.center.mul_(self.center_momentum).add_(batch_center,
                                                        alpha=1 - self.center_momentum)
        return loss

    def after_step(self) -> None:
        self.teacher.update(nn.Sequential(self.encoder, self.head))


class BarlowTwins(Objective):
    """Zbontar et al. 2021 (review [74, 18]): decorrelate, make invariant."""

    def __init__(self, encoder: nn.Module, lambda_offdiag: float = 0.005,
                 projection_dim: int = 512):
        super().__init__()
        self.encoder, self.lambd = encoder, lambda_offdiag
        d = encoder.feature_dim
        self.projector = mlp(d, projection_dim, projection_dim)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        v1, v2 = (standardise(v) for v in self.views(x, policy, gen))
        z1, z2 = self.projector(self.encoder(v1)), self.projector(self.encoder(v2))
        return losses.barlow_twins_loss(z1, z2, self.lambd)
