"""Fine-tuning a classifier on a small real subset of BreastMNIST: the settings the planner
stores (encoder learning-rate multiplier, augmentations, mode) change what is trained."""

from __future__ import annotations

import pytest
import torch

from tests.utils import breast_subset
from zoo.architectures import build_encoder
from zoo.datasets.readers import Dataset
from zoo.training.finetune import FinetuneSettings, finetune_classifier


@pytest.fixture(scope="module")
def small_breast() -> Dataset:
    return breast_subset(64, 16, 32)


def encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("resnet18", 2, 1, [28, 28], {"widths": [8, 8, 16, 16]})


def settings(**changes: object) -> FinetuneSettings:
    base = {"mode": "full", "label_fraction": 1.0, "seed": 0, "epochs": 1, "lr": 1e-2,
            "batch_size": 32, "device": torch.device("cpu")}
    return FinetuneSettings(**{**base, **changes})


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "weight" in k}


def test_zero_encoder_multiplier_keeps_the_encoder(small_breast: Dataset) -> None:
    start = encoder()
    before = weights(start)
    out = finetune_classifier(start, small_breast, settings(encoder_lr_multiplier=0.0))
    after = weights(out.model.encoder)
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = finetune_classifier(encoder(), small_breast, settings(encoder_lr_multiplier=1.0))
    assert not all(torch.equal(before[k], v) for k, v in weights(moved.model.encoder).items())
    assert set(out.metrics) == {"auc", "acc"} and out.labelled == 64


def test_augmentations_change_training_and_unusable_ones_are_reported(
        small_breast: Dataset) -> None:
    lines: list[str] = []
    plain = finetune_classifier(encoder(), small_breast, settings())
    augmented = finetune_classifier(
        encoder(), small_breast, settings(augmentations=["gaussian_noise", "color_jitter"]),
        lambda progress, metrics, line: lines.append(line or ""))
    assert any("color_jitter skipped" in line for line in lines)  # single-channel images
    assert not all(torch.equal(a, b) for a, b in zip(
        weights(plain.model.encoder).values(), weights(augmented.model.encoder).values(),
        strict=True))


def test_linear_probe_leaves_the_encoder_as_it_was(small_breast: Dataset) -> None:
    start = encoder()
    before = weights(start)
    out = finetune_classifier(start, small_breast, settings(mode="linear_probe"))
    assert all(torch.equal(before[k], v) for k, v in weights(out.model.encoder).items())
    assert 0.0 <= out.metrics["auc"] <= 1.0
