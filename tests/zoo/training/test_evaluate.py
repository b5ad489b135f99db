from __future__ import annotations

import math

import torch

from zoo.training.evaluate import knn, label_subset, linear_probe, medmnist_metrics, roc_auc


def naive_auc(scores: list[float], labels: list[int]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auc_matches_pairwise_definition_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40,), generator=gen).float()  # many ties
    labels = torch.randint(0, 2, (40,), generator=gen)
    assert math.isclose(roc_auc(scores, labels == 1),
                        naive_auc(scores.tolist(), labels.tolist()), rel_tol=1e-9)
    assert roc_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0


def test_medmnist_semantics() -> None:
    probs = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    m = medmnist_metrics(probs, torch.tensor([0, 1, 0, 1]))
    assert m["acc"] == 0.5 and m["auc"] == 0.5
    multi = medmnist_metrics(torch.eye(3)[[0, 1, 2, 2]], torch.tensor([0, 1, 2, 1]))
    assert multi["acc"] == 0.75


def test_label_subset_is_stratified_and_seeded() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    sub = label_subset(labels, 0.1, seed=3)
    assert int((labels[sub] == 0).sum()) == 9 and int((labels[sub] == 1).sum()) == 1
    assert torch.equal(sub, label_subset(labels, 0.1, seed=3))
    assert not torch.equal(sub, label_subset(labels, 0.1, seed=4))


def test_probe_and_knn_separate_separable_features() -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (200,), generator=gen)
    x = torch.randn(200, 8, generator=gen) + y[:, None] * 3.0
    for probs in (linear_probe(x[:150], y[:150], x[150:], 2), knn(x[:150], y[:150], x[150:], 2)):
        assert medmnist_metrics(probs, y[150:])["auc"] > 0.95
