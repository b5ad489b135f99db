"""Evaluation protocol: frozen linear probe and kNN, and full fine-tuning, at label
fractions of the train split with fixed seeds; AUC and ACC as MedMNIST computes them
(binary: score of class 1, ACC at 0.5; multi-class and ordinal: macro one-vs-rest AUC,
ACC of the argmax)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .augment import Policy, augment
from .train import pick_device, to_unit


def roc_auc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic, ties counted half."""
    pos, neg = scores[positives.bool()], scores[~positives.bool()]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = torch.empty(len(scores), dtype=torch.float64)
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = ranks[positives.bool()].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def medmnist_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """probs: (N, K) class probabilities."""
    k = probs.shape[1]
    if k == 2:
        auc = roc_auc(probs[:, 1], labels == 1)
        acc = float(((probs[:, 1] > 0.5).long() == labels).float().mean())
    else:
        aucs = [roc_auc(probs[:, c], labels == c) for c in range(k)]
        auc = float(sum(a for a in aucs if not math.isnan(a)) /
                    max(1, sum(not math.isnan(a) for a in aucs)))
        acc = float((probs.argmax(1) == labels).float().mean())
    return {"auc": auc, "acc": acc}


def label_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Stratified indices: `fraction` of each class, at least one per class."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        take = max(1, round(len(idx) * fraction))
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:take]])
    return torch.sort(torch.cat(picked)).values


@torch.inference_mode()
def features(encoder: nn.Module, images: torch.Tensor, batch: int = 512,
             device: torch.device | None = None) -> torch.Tensor:
    device = device or pick_device()
    encoder = encoder.to(device).eval()
    out = [encoder((to_unit(images[i:i + batch].to(device)) - 0.5) / 0.5).float().cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 classes: int, seed: int = 0, weight_decay: float = 1e-3,
                 steps: int = 300) -> torch.Tensor:
    """Multinomial logistic regression on standardised frozen features (L-BFGS)."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    layer = nn.Linear(a.shape[1], classes)
    opt = torch.optim.LBFGS(layer.parameters(), lr=0.5, max_iter=steps,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(layer(a), train_y) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return F.softmax(layer(b), 1)


def knn(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, classes: int,
        k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Weighted kNN on cosine similarity (Wu et al. 2018 style voting)."""
    a, b = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    sim = b @ a.t()
    k = min(k, len(a))
    top, idx = sim.topk(k, dim=1)
    weights = (top / temperature).exp()
    votes = torch.zeros(len(b), classes)
    votes.scatter_add_(1, train_y[idx], weights)
    return votes / votes.sum(1, keepdim=True)


@dataclass
class FineTuneConfig:
    """Defaults follow the MedMNIST v2 baselines (Adam, 1e-3, batch 128); jobs take theirs
    from rules/tables/finetune.yaml."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    # Encoder learning rate as a fraction of the head's (review 6.3: lower for the encoder).
    encoder_lr_multiplier: float = 1.0
    augment: Policy | None = None  # random views of each training batch; None: none


def fine_tune(encoder: nn.Module, train_images: torch.Tensor, train_y: torch.Tensor,
              val_images: torch.Tensor, val_y: torch.Tensor, test_images: torch.Tensor,
              classes: int, config: FineTuneConfig,
              on_epoch: Callable[[int, float], None] | None = None,
              return_model: bool = False) -> torch.Tensor | tuple[torch.Tensor, nn.Module]:
    """Train encoder + linear head end to end (Adam, cosine schedule); keep the epoch with
    the best validation AUC; return test probabilities (and the model if asked)."""
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model = nn.Sequential(copy.deepcopy(encoder), nn.Linear(encoder.feature_dim, classes))
    model.to(device)
    x = to_unit(train_images.to(device))  # in [0, 1]; normalised per batch, after augmenting
    channels_last = device.type == "cuda" and x.dim() == 4  # faster convolutions on the GPU
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = train_y.to(device)
    policy = config.augment if config.augment and config.augment.ops else None
    aug_gen = torch.Generator(device=device).manual_seed(config.seed) if policy else None
    opt = torch.optim.Adam([
        {"params": model[0].parameters(), "lr": config.lr * config.encoder_lr_multiplier},
        {"params": model[1].parameters(), "lr": config.lr}])
    steps = max(1, math.ceil(len(x) / config.batch_size)) * config.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    best, best_state = -1.0, None
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), config.batch_size):
            idx = order[i:i + config.batch_size]
            if len(idx) < 2:
                continue
            batch = x[idx]
            if policy:
                batch = augment(batch, policy, aug_gen)
            batch = (batch - 0.5) / 0.5
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model(batch), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        val = medmnist_metrics(_predict(model, val_images, device), val_y)["auc"]
        if on_epoch:
            on_epoch(epoch + 1, val)
        if not math.isnan(val) and val > best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    probs = _predict(model, test_images, device)
    return (probs, model.cpu()) if return_model else probs


@torch.inference_mode()
def _predict(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    model.eval()
    out = [F.softmax(model((to_unit(images[i:i + 512].to(device)) - 0.5) / 0.5).float(), 1).cpu()
           for i in range(0, len(images), 512)]
    return torch.cat(out)
