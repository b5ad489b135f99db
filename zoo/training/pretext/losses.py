"""Loss functions of the pretext objectives, vectorised. Each docstring names the paper;
tests/zoo/training/test_losses.py checks every one against its defining formula written naively."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy (Chen et al. 2020, review [10]).

    For 2N views, each view's positive is its partner; the other 2N-2 views are negatives.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def info_nce_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                   temperature: float = 0.2) -> torch.Tensor:
    """MoCo's InfoNCE: the key of the same image against a queue of past keys
    (He et al. 2020, review [27]). `queue` holds normalised keys as rows."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.t()
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL: 2 - 2 cos(prediction, target projection), averaged (Grill et al. 2020)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)), averaged (Chen & He 2021). Without a
    momentum target or negatives, the stop-gradient is what keeps the two branches from
    collapsing to a constant; it lives here so that no caller can forget it."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


def nearest_neighbours(z: torch.Tensor, support: torch.Tensor,
                       stored: torch.Tensor | None = None) -> torch.Tensor:
    """For each row of z, the row of `support` with the highest cosine similarity, without
    gradient (NNCLR, Dwibedi et al. 2021). `stored` (one bool per support row) marks the
    rows that hold real embeddings; while none do, each row is its own neighbour, since a
    placeholder picked as a positive would only teach noise. That fallback is a tensor
    select, not a Python branch, so it costs no host-device synchronisation."""
    z = z.detach()
    sim = F.normalize(z.float(), dim=1) @ F.normalize(support.float(), dim=1).t()
    if stored is None:
        return support[sim.argmax(1)].to(z.dtype)
    picked = support[sim.masked_fill(~stored, float("-inf")).argmax(1)].to(z.dtype)
    return torch.where(stored.any(), picked, z)


def nnclr_loss(z: torch.Tensor, p: torch.Tensor, support: torch.Tensor,
               temperature: float = 0.1, stored: torch.Tensor | None = None) -> torch.Tensor:
    """NNCLR's loss for one direction (Dwibedi et al. 2021, review [24]): sample i's
    positive is the nearest neighbour of its projection z_i in the support set, scored
    against the predictions p_k of the other view; the other samples' p_k are its
    negatives. The neighbour is another image that the network already maps close by, so
    the positive varies more than two crops of one image can."""
    nn = F.normalize(nearest_neighbours(z, support, stored), dim=1)
    logits = nn @ F.normalize(p, dim=1).t() / temperature
    return F.cross_entropy(logits, torch.arange(len(p), device=p.device))


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.005,
                      eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins: cross-correlation of batch-standardised embeddings pushed to the
    identity, off-diagonal terms weighted by lambda (Zbontar et al. 2021, review [74])."""
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / (z1.std(0, unbiased=False) + eps)
    b = (z2 - z2.mean(0)) / (z2.std(0, unbiased=False) + eps)
    c = a.t() @ b / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on + lambd * off


def dino_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """DINO: cross entropy between the centred, sharpened teacher distribution and the
    student's (Caron et al. 2021, review [52]). Inputs are logits of matching views."""
    t = F.softmax((teacher.detach() - center) / teacher_temp, dim=1)
    return -(t * F.log_softmax(student / student_temp, dim=1)).sum(1).mean()


def dense_nt_xent(f1: torch.Tensor, f2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Pixel/voxel-level contrast: the same location in two aligned feature maps is the
    positive, every other location of both maps a negative (in the spirit of DenseCL [82]
    and vox2vec [23]). f1, f2: (B, C, *spatial) with identical geometry."""
    c = f1.shape[1]
    a = f1.flatten(2).transpose(1, 2).reshape(-1, c)
    b = f2.flatten(2).transpose(1, 2).reshape(-1, c)
    return nt_xent(a, b, temperature)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               norm_pix: bool = False) -> torch.Tensor:
    """MAE / SimMIM reconstruction loss on masked patches only (He et al. 2022, [26]).
    pred, target: (B, L, P) patch pixels; mask: (B, L) with 1 for masked patches."""
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred - target).pow(2).mean(-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)


def masked_pixel_mse(pred: torch.Tensor, target: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """Context-encoder in-painting loss (Pathak et al. 2016; for segmentation, review [17]):
    squared error over the removed pixels only, since the encoder saw the rest and copying
    it back would teach nothing. pred, target: (B, C, *spatial); mask: (B, 1, *spatial)
    with 1 where content was removed. Each pixel is a one-pixel patch of `masked_mse`."""
    def pixels(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(2).transpose(1, 2)

    return masked_mse(pixels(pred), pixels(target), mask.flatten(1))


def assignment_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy of the batch's mean soft cluster assignment; p: (N, K) rows on the simplex."""
    q = p.mean(0)
    return -(q * q.clamp(min=1e-12).log()).sum()


def cluster_contrast(p1: torch.Tensor, p2: torch.Tensor,
                     temperature: float = 1.0) -> torch.Tensor:
    """Cluster-level loss of Contrastive Clustering (Li et al. 2021), which tissue
    clustering builds on (review [88]). p1, p2: (N, K) soft assignments of two views.

    A cluster is represented by its column, the batch's memberships in it, so NT-Xent over
    columns makes both views split the batch the same way; agreement alone is met by
    putting every image in one cluster, which subtracting each view's assignment entropy
    rules out."""
    agreement = nt_xent(p1.t(), p2.t(), temperature)
    return agreement - assignment_entropy(p1) - assignment_entropy(p2)


def latent_regression(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """I-JEPA: distance between predicted and target-encoder latents of the target blocks
    (Assran et al. 2023); targets are layer-normalised and never receive gradients."""
    target = F.layer_norm(target.detach(), target.shape[-1:])
    return F.smooth_l1_loss(pred, target)


def margin_contrastive(za: torch.Tensor, zb: torch.Tensor, same: torch.Tensor,
                       margin: float = 1.0) -> torch.Tensor:
    """The Siamese contrastive loss of Hadsell, Chopra and LeCun (2006) over all pairs
    (a_i, b_j): same-group pairs pay their squared distance, other pairs pay the squared
    shortfall of their distance below `margin`. Each half is averaged over its own pairs,
    so a batch with few positives still feels them."""
    d = torch.cdist(za.float(), zb.float())
    pos, neg = d[same], d[~same]
    pull = pos.pow(2).mean() if pos.numel() else d.new_zeros(())
    push = F.relu(margin - neg).pow(2).mean() if neg.numel() else d.new_zeros(())
    return pull + push
