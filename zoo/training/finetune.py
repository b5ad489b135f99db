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
from zoo.task_models import Classifier

from .augment import Policy
from .evaluate import (
    UNIT_HALF,
    FineTuneConfig,
    features,
    fine_tune,
    fit_linear_probe,
    label_subset,
    per_channel,
    predict,
)
from .report_metrics import task_report

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
    model: Classifier  # encoder + head, on the CPU (the encoder untouched by a probe)
    metrics: dict[str, float]  # test AUC and ACC (MedMNIST definitions)
    report: dict[str, Any]  # intervals, threshold, calibration, confusion (report_metrics)
    history: list[dict[str, float]]  # per epoch: train_loss, val_auc
    labelled: int
    labelled_per_class_min: int
    seconds: float


def _silent(progress: dict[str, Any], metrics: dict[str, Any] | None, line: str | None) -> None:
    pass


class StepReporter:
    """Progress at most once per `every` seconds (and at the last step): percent of all
    steps, step, epoch, the latest training loss and an ETA. The loss is read from the
    device only when reported."""

    def __init__(self, report: Progress, epochs: int, every: float = 1.0):
        self.report, self.epochs, self.every = report, epochs, every
        self.start = self.last = time.monotonic()

    def __call__(self, step: int, total: int, loss: torch.Tensor) -> None:
        now = time.monotonic()
        if now - self.last < self.every and step != total:
            return
        self.last = now
        eta = (now - self.start) / step * (total - step)
        self.report({"step": step, "steps": total, "percent": round(100 * step / total, 1),
                     "epoch": min(self.epochs, step * self.epochs // total),
                     "epochs": self.epochs, "loss": round(float(loss), 4),
                     "eta_s": round(eta, 1)}, None, None)


def finetune_classifier(encoder: nn.Module, dataset: Dataset, settings: FinetuneSettings,
                        report: Progress = _silent, mean: list[float] = UNIT_HALF,
                        std: list[float] = UNIT_HALF) -> FinetuneOutcome:
    """Linear probe on frozen features, or full fine-tuning with the best validation epoch
    kept; either way a task model (encoder + head), scored on the test split only after
    every choice (epoch, threshold) was made on validation."""
    train, val, test = dataset.splits["train"], dataset.splits["val"], dataset.splits["test"]
    idx = label_subset(train.labels, settings.label_fraction, settings.seed)
    classes, device, epochs = dataset.num_classes, settings.device, settings.epochs
    per_class = int(torch.bincount(train.labels[idx], minlength=classes).min())
    report({}, None, f"{settings.mode} on {len(idx)} of {len(train)} labelled images "
                     f"(at least {per_class} per class), {classes} classes, {device.type}")
    start = time.monotonic()
    history: list[dict[str, float]] = []
    if settings.mode == "linear_probe":
        report({"phase": "features", "epoch": 0, "epochs": 1, "percent": 0.0}, None,
               "computing frozen features")
        f_train = features(encoder, train.images[idx], device=device, mean=mean, std=std)
        head = fit_linear_probe(f_train, train.labels[idx], classes, settings.seed)
        model = Classifier(encoder, classes, per_channel(mean, dataset.channels),
                           per_channel(std, dataset.channels), dataset.spatial_dims)
        model.head.load_state_dict(head.state_dict())
        report({"phase": "training", "epoch": 1, "epochs": 1, "percent": 100.0, "eta_s": 0},
               None, None)
    else:
        policy = None
        if settings.augmentations:
            policy = Policy.build(settings.augmentations, [], dataset.channels)
            for name, why in policy.skipped.items():
                report({}, None, f"augmentation {name} skipped: {why}")
        report({"phase": "training", "epoch": 0, "epochs": epochs, "percent": 0.0}, None,
               "first training step")

        def on_epoch(record: dict[str, float]) -> None:
            history.append({k: round(v, 4) for k, v in record.items()})
            report({"epoch": int(record["epoch"]), "epochs": epochs},
                   {"epoch": int(record["epoch"]), "val_auc": round(record["val_auc"], 4),
                    "train_loss": round(record["train_loss"], 4)},
                   f"epoch {int(record['epoch'])}/{epochs} loss {record['train_loss']:.4f} "
                   f"val AUC {record['val_auc']:.4f}")

        config = FineTuneConfig(epochs=epochs, batch_size=settings.batch_size, lr=settings.lr,
                                seed=settings.seed, device=str(device),
                                encoder_lr_multiplier=settings.encoder_lr_multiplier,
                                augment=policy, mean=list(mean), std=list(std))
        _, model = fine_tune(encoder, train.images[idx], train.labels[idx], val.images,
                             val.labels, test.images, classes, config, on_epoch=on_epoch,
                             return_model=True, on_step=StepReporter(report, epochs))
    report({"phase": "evaluating"}, None, None)
    val_probs = predict(model, val.images, device)
    test_probs = predict(model, test.images, device)  # the test split, once, at the end
    summary = task_report(val_probs, val.labels, test_probs, test.labels, train.labels[idx])
    metrics = summary["metrics"]
    report({}, None, f"test AUC {metrics['auc']:.4f} ACC {metrics['acc']:.4f}")
    return FinetuneOutcome(model=model.cpu(), metrics=metrics, report=summary,
                           history=history, labelled=len(idx),
                           labelled_per_class_min=per_class,
                           seconds=time.monotonic() - start)
