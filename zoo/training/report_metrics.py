"""What a task model's card reports beyond AUC and ACC: intervals, calibration, errors.

Bootstrap intervals resample test images with replacement (percentile method, a fixed
seed, so a card is reproducible); the binary decision threshold is chosen on validation
(Youden's J: sensitivity + specificity - 1), never on test.
"""

from __future__ import annotations

import torch

from .evaluate import medmnist_metrics, roc_auc

BOOTSTRAP_SAMPLES = 1000
ECE_BINS = 15


def bootstrap_ci(probs: torch.Tensor, labels: torch.Tensor, samples: int = BOOTSTRAP_SAMPLES,
                 seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of test AUC and ACC."""
    gen = torch.Generator().manual_seed(seed)
    n = len(labels)
    draws: dict[str, list[float]] = {"auc": [], "acc": []}
    for _ in range(samples):
        idx = torch.randint(0, n, (n,), generator=gen)
        m = medmnist_metrics(probs[idx], labels[idx])
        for key in draws:
            if m[key] == m[key]:  # a resample with one class has no AUC
                draws[key].append(m[key])
    out = {}
    for key, values in draws.items():
        if values:
            t = torch.tensor(values)
            out[key] = (float(t.quantile(0.025)), float(t.quantile(0.975)))
    return out


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor,
                               bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            gap = (correct[inside].mean() - confidence[inside].mean()).abs()
            ece += float(gap) * float(inside.float().mean())
    return ece


def youden_threshold(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """The score cut that maximises sensitivity + specificity on these (validation) images."""
    pos, neg = positives.bool(), ~positives.bool()
    if not pos.any() or not neg.any():
        return 0.5
    best, best_j = 0.5, -1.0
    for cut in torch.unique(scores):
        called = scores >= cut
        j = float(called[pos].float().mean() + (~called[neg]).float().mean() - 1)
        if j > best_j:
            best, best_j = float(cut), j
    return best


def decide(probs: torch.Tensor, threshold: float | None) -> torch.Tensor:
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).long()
    return probs.argmax(dim=1)


def confusion(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> list[list[int]]:
    matrix = torch.zeros(classes, classes, dtype=torch.long)
    matrix.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    return matrix.tolist()


def balanced_accuracy(predicted: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    recalls = [float((predicted[labels == c] == c).float().mean())
               for c in range(classes) if (labels == c).any()]
    return sum(recalls) / len(recalls)


def task_report(val_probs: torch.Tensor, val_labels: torch.Tensor, test_probs: torch.Tensor,
                test_labels: torch.Tensor, train_labels: torch.Tensor) -> dict:
    """Everything the card's task section and evaluation rows need, from one fit."""
    classes = test_probs.shape[1]
    threshold = (youden_threshold(val_probs[:, 1], val_labels == 1) if classes == 2
                 else None)
    predicted = decide(test_probs, threshold)
    majority = int(torch.bincount(train_labels, minlength=classes).argmax())
    return {
        "metrics": medmnist_metrics(test_probs, test_labels),
        "ci95": bootstrap_ci(test_probs, test_labels),
        "threshold": threshold,
        "calibration_ece": round(expected_calibration_error(test_probs, test_labels), 4),
        "confusion_matrix": confusion(predicted, test_labels, classes),
        "balanced_accuracy": round(balanced_accuracy(predicted, test_labels, classes), 4),
        "majority_rate": round(float((test_labels == majority).float().mean()), 4),
        "val_auc": roc_auc(val_probs[:, 1], val_labels == 1) if classes == 2
        else medmnist_metrics(val_probs, val_labels)["auc"],
    }
