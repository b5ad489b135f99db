"""Contrastive objectives (review 4.1): SimCLR, MoCo v2, NNCLR, MICLe-style group
positives, contrastive clustering, and dense pixel/voxel-level contrast."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from ..augment import augment, photometric
from . import losses
from .base import EMA, Objective, feature_map, mlp, standardise


class SimCLR(Objective):
    """Chen et al. 2020 (review [10]); medical uses [14, 1, 16]."""

    def __init__(self, encoder: nn.Module, temperature: float = 0.1, projection_dim: int = 128):
        super().__init__()
        self.encoder, self.temperature = encoder, temperature
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(standardise(x)))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        v1, v2 = self.views(x, policy, gen)
        return losses.nt_xent(self.embed(v1), self.embed(v2), self.temperature)


class ContrastiveClustering(SimCLR):
    """Contrastive Clustering (Li et al. 2021), as tissue clustering uses it (review [88]):
    SimCLR's instance contrast plus a softmax head over `clusters` clusters whose
    assignments must agree across views. The instance term alone separates every image from
    every other; the cluster term makes the features group images, which is what
    annotation-free grouping of tissue needs."""

    def __init__(self, encoder: nn.Module, temperature: float = 0.5, clusters: int = 16,
                 cluster_temperature: float = 1.0, projection_dim: int = 128):
        super().__init__(encoder, temperature, projection_dim)
        self.cluster_temperature = cluster_temperature
        d = encoder.feature_dim
        self.cluster_head = mlp(d, d, clusters)

    def assign(self, features: torch.Tensor) -> torch.Tensor:
        """Soft assignments (N, K), in fp32 so that the entropy's logarithm stays exact."""
        return self.cluster_head(features).float().softmax(1)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        h1, h2 = (self.encoder(standardise(v)) for v in self.views(x, policy, gen))
        instance = losses.nt_xent(self.projector(h1), self.projector(h2), self.temperature)
        return instance + losses.cluster_contrast(self.assign(h1), self.assign(h2),
                                                  self.cluster_temperature)


def group_partners(groups: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """For each sample, the index of another sample of the same group (itself if alone)."""
    partner = torch.arange(len(groups))
    order = rng.randperm(len(groups), gen)
    by_group: dict[int, list[int]] = {}
    for i in order.tolist():
        by_group.setdefault(int(groups[i]), []).append(i)
    for members in by_group.values():
        if len(members) > 1:
            for a, b in zip(members, members[1:] + members[:1], strict=True):
                partner[a] = b
    return partner


class MICLe(SimCLR):
    """Multi-instance contrast (Azizi et al. 2021, review [5]): the positive of an image is
    another image of the same patient (group), each independently augmented."""

    needs_groups = True

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        if groups is None:
            return super().loss(x, policy, gen)
        partner = group_partners(groups.cpu(), gen).to(x.device)
        v1, v2 = augment(x, policy, gen), augment(x[partner], policy, gen)
        return losses.nt_xent(self.embed(v1), self.embed(v2), self.temperature)


@torch.no_grad()
def push_fifo(queue: torch.Tensor, pointer: torch.Tensor, rows: torch.Tensor) -> None:
    """Write `rows` over the oldest rows of a ring buffer `queue` and advance `pointer`,
    both in place. A batch larger than the queue keeps only its last rows: indices written
    twice in one assignment would leave it to chance which value stays."""
    size = queue.shape[0]
    rows = rows[-size:]
    n = rows.shape[0]
    idx = (pointer + torch.arange(n, device=queue.device)) % size
    queue[idx] = rows.to(queue.dtype)  # rows are bf16 under CUDA autocast
    pointer.copy_((pointer + n) % size)


class MoCoV2(Objective):
    """Momentum contrast with a queue of keys (He et al. 2020; Chen et al. 2020; review [27])."""

    def __init__(self, encoder: nn.Module, temperature: float = 0.2, queue_size: int = 4096,
                 momentum: float = 0.99, projection_dim: int = 128):
        super().__init__()
        self.encoder, self.temperature = encoder, temperature
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim)
        self.key = EMA(nn.ModuleDict({"encoder": encoder, "projector": self.projector}),
                       momentum)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, projection_dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        v1, v2 = self.views(x, policy, gen)
        q = self.projector(self.encoder(standardise(v1)))
        with torch.no_grad():
            key = self.key.at(v2.device)
            k = key["projector"](key["encoder"](standardise(v2)))
        # A snapshot: the queue is updated in place right after, while autograd needs it.
        loss = losses.info_nce_queue(q, k, self.queue.clone(), self.temperature)
        self._enqueue(F.normalize(k, dim=1))
        return loss

    def _enqueue(self, keys: torch.Tensor) -> None:
        push_fifo(self.queue, self.pointer, keys)

    def after_step(self) -> None:
        self.key.update(nn.ModuleDict({"encoder": self.encoder, "projector": self.projector}))


class NNCLR(SimCLR):
    """Nearest-neighbour contrast (Dwibedi et al. 2021); for MRI of neurodegenerative
    disorders, review [24]. The positive of a view is the nearest neighbour of its
    projection among `support_set_size` projections of past batches, so different scans
    that look alike (slices of similar anatomy) pull together, which crops of one scan
    alone cannot teach. A predictor on the other branch, as in the paper, and both
    directions averaged. The support set holds stop-gradient projections, normalised; only
    the first view's are stored, as the paper does, so one image does not fill two rows."""

    def __init__(self, encoder: nn.Module, temperature: float = 0.1,
                 support_set_size: int = 16384, projection_dim: int = 256,
                 predictor_hidden: int = 4096):
        super().__init__(encoder, temperature, projection_dim)
        self.predictor = mlp(projection_dim, predictor_hidden, projection_dim)
        # Zeros until filled; rows at or past `filled` are never picked as neighbours.
        self.register_buffer("support", torch.zeros(support_set_size, projection_dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        z1, z2 = (self.embed(v) for v in self.views(x, policy, gen))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        stored = torch.arange(len(self.support), device=self.support.device) < self.filled
        loss = (losses.nnclr_loss(z1, p2, self.support, self.temperature, stored)
                + losses.nnclr_loss(z2, p1, self.support, self.temperature, stored)) / 2
        with torch.no_grad():
            push_fifo(self.support, self.pointer, F.normalize(z1.detach(), dim=1))
            self.filled.copy_((self.filled + len(z1)).clamp(max=len(self.support)))
        return loss


class DenseContrast(Objective):
    """Global contrast plus contrast between corresponding feature-map locations
    (DenseCL [82], vox2vec [23]). Both views share their geometry, so locations align;
    they differ in intensity and noise only."""

    def __init__(self, encoder: nn.Module, temperature: float = 0.2, global_weight: float = 0.5,
                 projection_dim: int = 128):
        super().__init__()
        self.encoder, self.temperature, self.global_weight = encoder, temperature, global_weight
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        from ..augment import geometric

        base = geometric(x, policy, gen)
        v1, v2 = photometric(base, policy, gen), photometric(base, policy, gen)
        f1, f2 = feature_map(self.encoder, standardise(v1)), feature_map(
            self.encoder, standardise(v2))
        dense = losses.dense_nt_xent(f1, f2, self.temperature)
        g1 = self.projector(f1.flatten(2).mean(-1))
        g2 = self.projector(f2.flatten(2).mean(-1))
        return (1 - self.global_weight) * dense + self.global_weight * losses.nt_xent(
            g1, g2, self.temperature)
