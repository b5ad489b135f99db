"""Fine-tune a segmentation task model on a dataset with masks: data and settings in, the
tuned model and its test metrics out. No database and no HTTP, like `finetune.py`.

Dice + cross-entropy (MONAI `DiceCELoss`), image and mask augmented together
(`seg_augment`), random patches when the images are larger than the patch, sliding-window
inference (MONAI) for images larger than the patch, the epoch with the best validation
mean foreground Dice kept, and the test split scored once at the end (`seg_metrics`:
Dice, HD95 and surface Dice per class, with the dataset's spacing).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from zoo.datasets.base import Dataset
from zoo.segmentation import Segmenter

from .finetune import Progress, StepReporter, _silent
from .seg_augment import SegmentationPolicy, augment_pair, random_crop
from .seg_metrics import mean_foreground_dice, segmentation_scores
from .train import to_unit

Batch = tuple[torch.Tensor, torch.Tensor]  # float images in [0, 1], long masks


class SegmentSettingsError(ValueError):
    pass


@dataclass
class SegmentSettings:
    label_fraction: float  # of the training images whose masks are used (seeded)
    seed: int
    epochs: int
    lr: float
    batch_size: int
    device: torch.device
    encoder_lr_multiplier: float = 1.0
    # Train the decoder only: the encoder's weights and batch-norm statistics stay as
    # given (the segmentation counterpart of a linear probe).
    freeze_encoder: bool = False
    augmentations: list[str] = field(default_factory=list)
    # Train on random crops of this size; None: whole images (a ViT's own size at most).
    patch_size: list[int] | None = None
    overlap: float = 0.25  # sliding-window overlap at inference
    surface_tolerance_mm: float | None = None  # None: one voxel (the largest spacing)


@dataclass
class SegmentOutcome:
    model: Segmenter  # the validation-chosen epoch, on the CPU
    metrics: dict[str, float | None]  # test means and per-class Dice, HD95, surface Dice
    report: dict[str, Any]  # seg_metrics.segmentation_scores on test, plus val_dice
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, val_dice
    labelled: int
    seconds: float


def mask_subset(count: int, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of the training images whose masks are used: `fraction` of them,
    at least one, drawn with `seed`."""
    if not 0 < fraction <= 1:
        raise SegmentSettingsError(f"label_fraction must be in (0, 1], got {fraction}")
    take = max(1, round(count * fraction))
    gen = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(count, generator=gen)[:take]).values


def training_patch(model: Segmenter, image_size: list[int],
                   patch_size: list[int] | None) -> list[int]:
    """The window trained on: the settings' patch (clipped to the image), else the whole
    image; a ViT never gets more than the size it was built at."""
    patch = list(patch_size) if patch_size else list(image_size)
    if len(patch) != len(image_size):
        raise SegmentSettingsError(f"patch_size {patch} has {len(patch)} axes; the images "
                                   f"have {len(image_size)}")
    if model.max_size is not None:
        patch = [min(p, m) for p, m in zip(patch, model.max_size, strict=True)]
    return [min(p, s) for p, s in zip(patch, image_size, strict=True)]


def training_batches(images: torch.Tensor, masks: torch.Tensor, batch_size: int,
                     patch: list[int], policy: SegmentationPolicy | None,
                     gen: torch.Generator, aug_gen: torch.Generator | None,
                     device: torch.device) -> Iterator[Batch]:
    """One epoch of shuffled batches: crop (uint8, where the data is), move, scale to
    [0, 1], augment. Order and crops are drawn with `gen` (CPU), augmentations with
    `aug_gen` (on `device`). A last batch of one image is dropped (batch norm needs two)."""
    order = torch.randperm(len(images), generator=gen)
    for i in range(0, len(images), batch_size):
        idx = order[i:i + batch_size]
        if len(idx) < 2:
            continue
        x, y = random_crop(images[idx], masks[idx], patch, gen)
        x = to_unit(x.to(device, non_blocking=True))
        y = y.to(device, non_blocking=True).long()
        if policy is not None and policy.active:
            x, y = augment_pair(x, y, policy, aug_gen)
        yield x, y


def dice_ce_loss() -> nn.Module:
    """Cross-entropy plus soft Dice over the foreground classes, pooled over the batch
    (nnU-Net's batch Dice), so that a patch without foreground does not divide by zero."""
    from monai.losses import DiceCELoss

    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)


def train_step(model: Segmenter, loss_fn: nn.Module, opt: torch.optim.Optimizer,
               x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimiser step; returns the loss, still on the device."""
    device = x.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model.logits(x)
    loss = loss_fn(logits.float(), y[:, None])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train_epoch(model: Segmenter, batches: Iterator[Batch], loss_fn: nn.Module,
                opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                on_step: Callable[[torch.Tensor], None] | None = None,
                freeze_encoder: bool = False) -> float:
    """Mean training loss over one epoch's batches (one host synchronisation, at the end).
    A frozen encoder runs in eval mode, so its batch-norm statistics do not drift."""
    model.train()
    if freeze_encoder:
        model.encoder.eval()
    total, steps = None, 0
    for x, y in batches:
        loss = train_step(model, loss_fn, opt, x, y)
        sched.step()
        total = loss if total is None else total + loss
        steps += 1
        if on_step:
            on_step(loss)
    return float(total) / steps if steps else math.nan


@torch.inference_mode()
def predict_labels(model: Segmenter, images: torch.Tensor, device: torch.device,
                   window: list[int], batch_size: int, overlap: float = 0.25) -> torch.Tensor:
    """uint8 label maps (N, *spatial) for uint8 images: the whole image at once when it
    fits the window, else sliding windows blended with Gaussian weights (MONAI)."""
    from monai.inferers import sliding_window_inference

    model = model.to(device).eval()
    whole = all(s <= w for s, w in zip(images.shape[2:], window, strict=True))
    out = []
    for i in range(0, len(images), batch_size):
        x = to_unit(images[i:i + batch_size].to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            if whole:
                probs = model(x)
            else:
                probs = sliding_window_inference(x, window, batch_size, model,
                                                 overlap=overlap, mode="gaussian")
        out.append(probs.argmax(1).to(torch.uint8).cpu())
    return torch.cat(out)


def _optimiser(model: Segmenter, settings: SegmentSettings) -> torch.optim.Optimizer:
    """Adam; the encoder's rate a fraction of the decoder's (review 6.3), or the encoder
    left out (and its gradients not computed) when frozen."""
    decoder = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    if settings.freeze_encoder:
        model.encoder.requires_grad_(False)
        return torch.optim.Adam(decoder, lr=settings.lr)
    return torch.optim.Adam([
        {"params": model.encoder.parameters(), "lr": settings.lr * settings.encoder_lr_multiplier},
        {"params": decoder, "lr": settings.lr}])


def _check(model: Segmenter, dataset: Dataset, settings: SegmentSettings) -> list[str]:
    """The class names; raises SegmentSettingsError on data the model cannot learn."""
    if not dataset.has_masks:
        raise SegmentSettingsError(f"{dataset.name} has no masks in every split")
    names = list(dataset.info.get("mask_classes") or
                 ["background", *(f"class {k}" for k in range(1, model.classes))])
    if len(names) != model.classes:
        raise SegmentSettingsError(f"the model predicts {model.classes} classes; the dataset "
                                   f"declares {len(names)}: {names}")
    top = max(int(s.masks.max()) for s in dataset.splits.values() if len(s))
    if top >= model.classes:
        raise SegmentSettingsError(f"masks hold the label {top}; the model has "
                                   f"{model.classes} classes")
    if settings.epochs < 1 or settings.batch_size < 2:
        raise SegmentSettingsError("epochs must be at least 1 and batch_size at least 2")
    return names


def finetune_segmenter(model: Segmenter, dataset: Dataset, settings: SegmentSettings,
                       report: Progress = _silent) -> SegmentOutcome:
    """Train a copy of `model` (encoder and decoder) end to end; keep the epoch with the
    best validation mean foreground Dice; score the test split once, at the end."""
    names = _check(model, dataset, settings)
    train, val = dataset.splits["train"], dataset.splits["val"]
    device, epochs, start = settings.device, settings.epochs, time.monotonic()
    policy = SegmentationPolicy.build(settings.augmentations, dataset.channels)
    for name, why in policy.skipped.items():
        report({}, None, f"augmentation {name} skipped: {why}")
    idx = mask_subset(len(train), settings.label_fraction, settings.seed)
    patch = training_patch(model, dataset.image_size, settings.patch_size)
    window = list(model.max_size or patch)
    report({}, None, f"segmentation on {len(idx)} of {len(train)} masked images, "
                     f"{len(names)} classes, patch {patch}, {device.type}"
                     + (", encoder frozen" if settings.freeze_encoder else ""))
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    aug_gen = torch.Generator(device=device).manual_seed(settings.seed)
    model = copy.deepcopy(model).to(device)
    images, masks = train.images[idx], train.masks[idx]
    if device.type == "cuda":  # the data is small next to GPU memory: keep it there
        images, masks = images.to(device), masks.to(device)
    per_epoch = sum(1 for i in range(0, len(idx), settings.batch_size) if len(idx) - i >= 2)
    opt = _optimiser(model, settings)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, per_epoch * epochs))
    loss_fn, steps = dice_ce_loss(), StepReporter(report, epochs)
    count = [0]

    def on_step(loss: torch.Tensor) -> None:
        count[0] += 1
        steps(count[0], max(1, per_epoch * epochs), loss)

    report({"phase": "training", "epoch": 0, "epochs": epochs, "percent": 0.0}, None,
           "first training step")
    history: list[dict[str, float]] = []
    best, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        batches = training_batches(images, masks, settings.batch_size, patch, policy, gen,
                                   aug_gen, device)
        loss = train_epoch(model, batches, loss_fn, opt, sched, on_step,
                           settings.freeze_encoder)
        pred = predict_labels(model, val.images, device, window, settings.batch_size,
                              settings.overlap)
        val_dice = mean_foreground_dice(pred, val.masks, model.classes)
        history.append({"epoch": epoch, "train_loss": round(loss, 4),
                         "val_dice": round(val_dice, 4)})
        report({"epoch": epoch, "epochs": epochs},
               {"epoch": epoch, "train_loss": round(loss, 4), "val_dice": round(val_dice, 4)},
               f"epoch {epoch}/{epochs} loss {loss:.4f} val Dice {val_dice:.4f}")
        if not math.isnan(val_dice) and val_dice > best:
            best, best_state = val_dice, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    model.encoder.requires_grad_(True)  # the returned model trains like any other
    report({"phase": "evaluating"}, None, None)
    scores = test_scores(model, dataset, names, settings, window)
    scores["val_dice"] = round(best, 4) if best_state is not None else None
    metrics = flat_metrics(scores)
    report({}, None, f"test Dice {metrics['dice']} HD95 {metrics['hd95_mm']} mm "
                     f"surface Dice {metrics['surface_dice']}")
    return SegmentOutcome(model=model.cpu(), metrics=metrics, report=scores, history=history,
                          labelled=len(idx), seconds=time.monotonic() - start)


def test_scores(model: Segmenter, dataset: Dataset, names: list[str],
                settings: SegmentSettings, window: list[int]) -> dict[str, Any]:
    """The test split, predicted once, after every choice was made on validation; scored
    with the dataset's spacing (`seg_metrics.segmentation_scores`)."""
    test = dataset.splits["test"]
    pred = predict_labels(model, test.images, settings.device, window, settings.batch_size,
                          settings.overlap)
    return segmentation_scores(pred, test.masks, names, dataset.info.get("spacing"),
                               settings.surface_tolerance_mm)


def flat_metrics(scores: dict[str, Any]) -> dict[str, float | None]:
    """{dice, hd95_mm, surface_dice} means and `dice/<class>`-style per-class entries."""
    out: dict[str, float | None] = dict(scores["mean"])
    for name, values in scores["classes"].items():
        for key in ("dice", "hd95_mm", "surface_dice"):
            out[f"{key}/{name}"] = values[key]
    return out
