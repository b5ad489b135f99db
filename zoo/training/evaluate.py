"""Evaluation protocol: frozen linear probe and kNN, and full fine-tuning, at label
fractions of the train split with fixed seeds; AUC and ACC as MedMNIST computes them
(binary: score of class 1, ACC at 0.5; multi-class and ordinal: macro one-vs-rest AUC,
ACC of the argmax)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from zoo.task_models import Classifier

from .augment import Policy, augment
from .train import pick_device, to_unit

UNIT_HALF = [0.5]  # the MedMNIST baselines' normalisation: (x - 0.5) / 0.5


def per_channel(values: list[float], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values)


def roc_auc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve via the Mann-Whitney statistic, ties counted half."""
    positives = positives.bool()
    n_pos = int(positives.sum())
    n_neg = len(scores) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # 0-based rank of each distinct value's first
    average = first.double() + (counts.double() + 1) / 2  # mean 1-based rank over its ties
    r_pos = average[inverse][positives].sum()
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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
             device: torch.device | None = None, mean: list[float] = UNIT_HALF,
             std: list[float] = UNIT_HALF) -> torch.Tensor:
    device = device or pick_device()
    encoder = encoder.to(device).eval()
    shape = (1, -1, *([1] * (images.dim() - 2)))
    m = torch.tensor(per_channel(mean, images.shape[1]), device=device).reshape(shape)
    s = torch.tensor(per_channel(std, images.shape[1]), device=device).reshape(shape)
    out = [encoder((to_unit(images[i:i + batch].to(device)) - m) / s).float().cpu()
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def fit_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, classes: int,
                     seed: int = 0, weight_decay: float = 1e-3, steps: int = 300
                     ) -> nn.Linear:
    """Multinomial logistic regression on standardised frozen features (L-BFGS), returned
    as one linear layer on the raw features (the standardisation folded in)."""
    torch.manual_seed(seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a = (train_x - mean) / std
    layer = nn.Linear(a.shape[1], classes)
    opt = torch.optim.LBFGS(layer.parameters(), lr=0.5, max_iter=steps,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(layer(a), train_y) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    folded = nn.Linear(a.shape[1], classes)
    with torch.no_grad():  # W (x - m) / s + b  ==  (W / s) x + (b - (W / s) m)
        folded.weight.copy_(layer.weight / std)
        folded.bias.copy_(layer.bias - folded.weight @ mean)
    return folded


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 classes: int, seed: int = 0, weight_decay: float = 1e-3,
                 steps: int = 300) -> torch.Tensor:
    """Test probabilities of `fit_linear_probe`."""
    layer = fit_linear_probe(train_x, train_y, classes, seed, weight_decay, steps)
    with torch.no_grad():
        return F.softmax(layer(test_x), 1)


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
    mean: list[float] = field(default_factory=lambda: list(UNIT_HALF))  # the card's
    std: list[float] = field(default_factory=lambda: list(UNIT_HALF))


def fine_tune(encoder: nn.Module, train_images: torch.Tensor, train_y: torch.Tensor,
              val_images: torch.Tensor, val_y: torch.Tensor, test_images: torch.Tensor,
              classes: int, config: FineTuneConfig,
              on_epoch: Callable[[dict[str, float]], None] | None = None,
              return_model: bool = False,
              on_step: Callable[[int, int, torch.Tensor], None] | None = None,
              ) -> torch.Tensor | tuple[torch.Tensor, Classifier]:
    """Train encoder + linear head end to end (Adam, cosine schedule); keep the epoch with
    the best validation AUC; return test probabilities (and the model if asked).

    `on_epoch` gets {epoch, train_loss, val_auc}; `on_step` gets (step, total, loss) with
    the loss still on the device, so a caller that reports now and then pays for one host
    synchronisation per report, not one per step."""
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    channels = train_images.shape[1]
    model = Classifier(copy.deepcopy(encoder), classes, per_channel(config.mean, channels),
                       per_channel(config.std, channels), train_images.dim() - 2)
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
        {"params": model.encoder.parameters(), "lr": config.lr * config.encoder_lr_multiplier},
        {"params": model.head.parameters(), "lr": config.lr}])
    per_epoch = sum(1 for i in range(0, len(x), config.batch_size)
                    if len(x) - i >= 2)  # a last batch of one image is skipped
    steps = max(1, per_epoch) * config.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    best, best_state, step = -1.0, None, 0
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, len(x), config.batch_size):
            idx = order[i:i + config.batch_size]
            if len(idx) < 2:
                continue
            batch = x[idx]
            if policy:
                batch = augment(batch, policy, aug_gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = F.cross_entropy(model.logits(batch), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += loss.detach()
            if on_step:
                on_step(step, steps, loss.detach())
        val = medmnist_metrics(predict(model, val_images, device), val_y)["auc"]
        if on_epoch:
            on_epoch({"epoch": epoch + 1, "train_loss": float(total) / max(1, per_epoch),
                      "val_auc": val})
        if not math.isnan(val) and val > best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    probs = predict(model, test_images, device)
    return (probs, model.cpu()) if return_model else probs


@torch.inference_mode()
def predict(model: Classifier, images: torch.Tensor, device: torch.device | None = None
            ) -> torch.Tensor:
    """Class probabilities of a task model for uint8 images."""
    device = device or pick_device()
    model = model.to(device).eval()
    out = [model(to_unit(images[i:i + 512].to(device))).float().cpu()
           for i in range(0, len(images), 512)]
    return torch.cat(out)

