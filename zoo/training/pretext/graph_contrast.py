"""Contrast with structure (review 4.1): LVM-Med's second-order graph matching across two
augmented batches [51], and PaRCL's weakly augmented MoCo on aggregated multi-layer
features [90]."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo.architectures import ResNetEncoder

from ..augment import Policy
from . import losses
from .base import EMA, Objective, ObjectiveError, mlp, stage_maps, standardise
from .contrastive import MoCoV2

SINKHORN_STEPS = 20  # alternating row/column normalisations; B x B, so cheap at any batch


def knn_adjacency(z: torch.Tensor, k: int) -> torch.Tensor:
    """Directed k-nearest-neighbour graph of the rows of z by cosine similarity: (B, B)
    bool, row i marks the k rows most similar to row i, itself excluded. k is capped at
    B - 1 (a batch smaller than k + 1 gives the complete graph)."""
    b = z.shape[0]
    k = min(k, b - 1)
    adjacency = torch.zeros(b, b, dtype=torch.bool, device=z.device)
    if k < 1:
        return adjacency
    zn = F.normalize(z.detach().float(), dim=1)
    sim = (zn @ zn.t()).fill_diagonal_(float("-inf"))
    return adjacency.scatter_(1, sim.topk(k, dim=1).indices, True)


def soft_adjacency(z: torch.Tensor, adjacency: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """Row i: a distribution over i's graph neighbours, softmax of cosine similarity over
    the kNN support (fp32). The support is discrete; the weights carry the gradient."""
    zn = F.normalize(z.float(), dim=1)
    logits = (zn @ zn.t() / temperature).masked_fill(~adjacency, torch.finfo(torch.float32).min)
    return logits.softmax(1) * adjacency  # a row without neighbours stays zero, not NaN


def sinkhorn(logits: torch.Tensor, steps: int = SINKHORN_STEPS) -> torch.Tensor:
    """Log of a (near) doubly stochastic soft assignment from affinity logits, in fp32."""
    log_p = logits.float()
    for _ in range(steps):
        log_p = log_p - log_p.logsumexp(1, keepdim=True)
        log_p = log_p - log_p.logsumexp(0, keepdim=True)
    return log_p


def node_matching(log_p: torch.Tensor) -> torch.Tensor:
    """First order: cross entropy of the soft assignment against the identity matching
    (image i of view 1 is image i of view 2). Zero only for the exact identity."""
    return -torch.diagonal(log_p).mean()


def edge_consistency(w1: torch.Tensor, w2: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Second order: squared Frobenius distance between view 1's soft adjacency and view
    2's carried into view 1's node order by the assignment, ||W1 - P W2 P^T||^2 / B (the
    Koopmans-Beckmann graph-matching cost). Zero when P maps one graph onto the other."""
    return (w1 - p @ w2 @ p.t()).pow(2).sum() / w1.shape[0]


class LVMMed(Objective):
    """LVM-Med graph matching (Nguyen et al. 2023, review [51]). Each view of the batch is
    a kNN graph (`graph_neighbours` edges per image) over its projected embeddings; the
    loss asks that the cross-view matching of nodes be the identity (first order) and that
    neighbourhoods agree under that matching (second order), so similar images stay
    similarly connected.

    The paper scores node and edge affinities, solves the quadratic assignment with a
    combinatorial solver and back-propagates the Hamming loss to the identity matching by
    blackbox differentiation. We relax it instead: a Sinkhorn soft assignment (fp32) of
    the cross-view cosine affinities, its cross entropy to the identity, plus the
    Koopmans-Beckmann cost ||W1 - P W2 P^T||^2 between the views' soft kNN adjacencies
    under that assignment. This is differentiable end to end, needs no solver on the host
    and no per-step synchronisation; the edge structure shapes the matching through the
    gradient of the second term rather than inside the solver."""

    def __init__(self, encoder: nn.Module, graph_neighbours: int = 5,
                 temperature: float = 0.1, second_order_weight: float = 1.0,
                 projection_dim: int = 128):
        super().__init__()
        if int(graph_neighbours) < 1:
            raise ObjectiveError("graph_neighbours must be at least 1")
        self.encoder, self.k, self.temperature = encoder, int(graph_neighbours), temperature
        self.second_order_weight = second_order_weight
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim)

    def terms(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(node term, edge term) for the embeddings of two views of one batch. All in fp32
        with autocast off: exponentiated similarities over a temperature, and kNN ranks
        that bf16 would tie."""
        with torch.autocast(z1.device.type, enabled=False):
            z1, z2 = z1.float(), z2.float()
            a1, a2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
            log_p = sinkhorn(a1 @ a2.t() / self.temperature)
            w1 = soft_adjacency(z1, knn_adjacency(z1, self.k), self.temperature)
            w2 = soft_adjacency(z2, knn_adjacency(z2, self.k), self.temperature)
            return node_matching(log_p), edge_consistency(w1, w2, log_p.exp())

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        z1, z2 = (self.projector(self.encoder(standardise(v)))
                  for v in self.views(x, policy, gen))
        node, edge = self.terms(z1, z2)
        return node + self.second_order_weight * edge


# Flips and intensity changes keep a lesion's size, texture and sharpness; crops can cut
# it out and blur, noise and colour jitter can erase the subtle signs PaRCL is after.
WEAK_OPS = frozenset({"horizontal_flip", "vertical_flip", "intensity_shift", "gamma"})
STRENGTHS = {"weak": WEAK_OPS}


def stage_widths(encoder: nn.Module) -> list[int]:
    """Channels out of each stage: the width of its last batch normalisation."""
    net, norms = encoder.net, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return [[m for m in layer.modules() if isinstance(m, norms)][-1].num_features
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]


class MultiLayerHead(nn.Module):
    """Each stage's global-average-pooled output through its own projector, L2-normalised
    in fp32 and averaged: an ensemble of the four sub-networks ending at each stage, so
    shallow texture (small lesions) weighs as much as deep context."""

    def __init__(self, widths: list[int], hidden: int, dim: int):
        super().__init__()
        self.heads = nn.ModuleList(mlp(w, hidden, dim) for w in widths)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        parts = [F.normalize(head(m.flatten(2).mean(-1)).float(), dim=1)
                 for head, m in zip(self.heads, maps, strict=True)]
        return torch.stack(parts).mean(0)


class PaRCL(MoCoV2):
    """PaRCL (Yi et al. 2024, review [90]): MoCo v2 (momentum key encoder, queue of keys,
    InfoNCE; MoCoV2's queue and EMA are reused) without strong augmentation, whose query
    and key are aggregated multi-layer features of the same fundus image.

    `augmentation_strength` must be "weak": the views keep only the policy's flips and
    intensity ops (WEAK_OPS), dropping crops, rotations, blur, noise and colour, since
    those can remove the small lesions the features must keep. The paper's sub-network
    ensemble is realised as one projector per ResNet stage over its pooled output,
    averaged (MultiLayerHead); the momentum copy carries its own heads."""

    def __init__(self, encoder: nn.Module, augmentation_strength: str = "weak",
                 temperature: float = 0.2, queue_size: int = 4096, momentum: float = 0.999,
                 projection_dim: int = 128):
        if augmentation_strength not in STRENGTHS:
            raise ObjectiveError(f"augmentation_strength must be one of {sorted(STRENGTHS)}, "
                                 f"got {augmentation_strength!r}")
        if not isinstance(encoder, ResNetEncoder):
            raise ObjectiveError("this objective needs a convolutional (resnet) encoder")
        super().__init__(encoder, temperature, queue_size, momentum, projection_dim)
        self.ops = STRENGTHS[augmentation_strength]
        # Replace MoCo's single-layer projector, and its momentum copy with it.
        self.projector = MultiLayerHead(stage_widths(encoder), encoder.feature_dim,
                                        projection_dim)
        self.key = EMA(nn.ModuleDict({"encoder": encoder,
                                       "projector": self.projector}), momentum)

    def weak(self, policy: Policy) -> Policy:
        return Policy(policy.ops & self.ops, policy.crop_scale, policy.skipped)

    @staticmethod
    def embed(encoder: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The aggregated multi-layer feature of images x in [0, 1]."""
        return head(stage_maps(encoder, standardise(x)))

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        v1, v2 = self.views(x, self.weak(policy), gen)
        q = self.embed(self.encoder, self.projector, v1)
        with torch.no_grad():
            key = self.key.at(v2.device)
            k = self.embed(key["encoder"], key["projector"], v2)
        # As MoCoV2.loss: score against a snapshot, since the queue is updated in place.
        loss = losses.info_nce_queue(q, k, self.queue.clone(), self.temperature)
        self._enqueue(F.normalize(k, dim=1))
        return loss
