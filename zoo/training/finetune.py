"""Fine-tune a zoo encoder on a labelled classification dataset: data and settings in,
the tuned encoder and its test metrics out. No database and no HTTP: the job runner
(service/jobs/runner.py) supplies the settings from a stored plan and reports progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from zoo.datasets.readers import Dataset

from .augment import Policy
from .evaluate import (
    FineTuneConfig,
    features,
    fine_tune,
    label_subset,
    linear_probe,
    medmnist_metrics,
)

# progress fields (epoch, epochs, eta_s, phase), metrics, and a log line; any may be empty.
Progress = Callable[[dict[str, Any], dict[str, Any] | None, str | None], None]


@dataclass
class FinetuneSettings:
    mode: Literal["linear_probe", "full"]
    label_fraction: float
    seed: int
    epochs: int
    lr: float
    batch_size: int
    device: torch.device
    encoder_lr_multiplier: float = 1.0
    augmentations: list[str] = field(default_factory=list)


@dataclass
class FinetuneOutcome:
    encoder: nn.Module  # the tuned encoder (the input one for a linear probe), on the CPU
    metrics: dict[str, float]  # test AUC and ACC (MedMNIST definitions)
    labelled: int
    seconds: float


def _silent(progress: dict[str, Any], metrics: dict[str, Any] | None, line: str | None) -> None:
    pass


def finetune_classifier(encoder: nn.Module, dataset: Dataset, settings: FinetuneSettings,
                        report: Progress = _silent) -> FinetuneOutcome:
    """Linear probe on frozen features, or full fine-tuning with the best validation epoch
    kept; evaluated on the test split."""
    train, val, test = dataset.splits["train"], dataset.splits["val"], dataset.splits["test"]
    idx = label_subset(train.labels, settings.label_fraction, settings.seed)
    classes, device, epochs = dataset.num_classes, settings.device, settings.epochs
    report({}, None, f"{settings.mode} on {len(idx)} of {len(train)} labelled images, "
                     f"{classes} classes, {device.type}")
    start = time.monotonic()
    report({"phase": "training", "epoch": 0, "epochs": epochs}, None, "first training step")
    if settings.mode == "linear_probe":
        report({"epoch": 0, "epochs": 1, "phase": "features"}, None, None)
        f_train = features(encoder, train.images[idx], device=device)
        f_test = features(encoder, test.images, device=device)
        probs = linear_probe(f_train, train.labels[idx], f_test, classes, settings.seed)
        tuned = encoder
        report({"epoch": 1, "epochs": 1, "eta_s": 0}, None, None)
    else:
        policy = None
        if settings.augmentations:
            policy = Policy.build(settings.augmentations, [], dataset.channels)
            for name, why in policy.skipped.items():
                report({}, None, f"augmentation {name} skipped: {why}")

        def on_epoch(epoch: int, val_auc: float) -> None:
            elapsed = time.monotonic() - start
            report({"epoch": epoch, "epochs": epochs,
                    "eta_s": round(elapsed / epoch * (epochs - epoch), 1)},
                   {"val_auc": round(val_auc, 4)},
                   f"epoch {epoch}/{epochs} val AUC {val_auc:.4f}")

        config = FineTuneConfig(epochs=epochs, batch_size=settings.batch_size, lr=settings.lr,
                                seed=settings.seed, device=str(device),
                                encoder_lr_multiplier=settings.encoder_lr_multiplier,
                                augment=policy)
        probs, model = fine_tune(encoder, train.images[idx], train.labels[idx], val.images,
                                 val.labels, test.images, classes, config, on_epoch=on_epoch,
                                 return_model=True)
        tuned = model[0]
    metrics = medmnist_metrics(probs, test.labels)
    report({}, None, f"test AUC {metrics['auc']:.4f} ACC {metrics['acc']:.4f}")
    return FinetuneOutcome(encoder=tuned.cpu(), metrics=metrics, labelled=len(idx),
                           seconds=time.monotonic() - start)
