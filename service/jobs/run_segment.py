"""Job glue for segmentation fine-tuning: a U-Net decoder on the planned encoder, trained
by `zoo.training.segment`, registered as a segmentation task model with its test Dice,
HD95 and surface Dice. Like the classification path, the plan decides and this executes.
"""

from __future__ import annotations

import math
from typing import Any

from zoo.cards import StoredCard
from zoo.catalog import DatasetRow
from zoo.storage import BlobStore

from .models import JobRow
from .plan import FEW_LABELS, FinetunePlan
from .runner import (
    Log,
    Sessions,
    complete,
    outcome_of,
    parent_encoder,
    report_to,
    save_curves,
    start_run,
    tuned_card,
)

# Card evaluation rows: the flat metric keys of zoo.training.segment, as card metric names.
METRICS = {"dice": "DICE", "hd95_mm": "HD95_MM", "surface_dice": "SURFACE_DICE"}


def mask_classes(row: DatasetRow, dataset: Any) -> list[str]:
    names = dataset.info.get("mask_classes") or row.summary.get("mask_classes")
    if not names:
        top = max(int(s.masks.max()) for s in dataset.splits.values() if len(s))
        names = ["background", *(f"class {k}" for k in range(1, top + 1))]
    return list(names)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def evaluation_rows(plan: FinetunePlan, dataset: str, metrics: dict[str, Any]
                    ) -> list[dict[str, Any]]:
    """Mean and per-class test scores; a score that cannot be computed (a class absent
    from every test mask gives no distance) is left out rather than written as NaN."""
    protocol = "fine_tune" if plan.mode == "full" else "linear_probe"
    rows = []
    for key, value in metrics.items():
        kind, _, cls = key.partition("/")
        if kind not in METRICS or _finite(value) is None:
            continue
        rows.append({"dataset": dataset, "protocol": protocol,
                     "label_fraction": plan.label_fraction,
                     "metric": METRICS[kind] + (f"/{cls}" if cls else ""),
                     "value": _finite(value), "seeds": [plan.seed], "split": "test"})
    return rows


def segmentation_card(parent: StoredCard, plan: FinetunePlan, row: DatasetRow, job_id: int,
                      outcome: Any, classes: list[str], curves: str | None,
                      input_size: list[int]) -> dict[str, Any]:
    """The task model's card: the parent's facts at the size it was trained at, the mask
    classes, this job's lineage and the test scores."""
    card = tuned_card(parent, plan, row, job_id, "seg", input_size)
    parent_repo = card["parent"]
    few = outcome.labelled < FEW_LABELS
    how = "decoder on the frozen encoder" if plan.mode == "linear_probe" else "U-Net fine-tune"
    dice = _finite(outcome.metrics.get("dice"))
    card.update({
        "description": f"Segmentation of {', '.join(classes[1:])} in {row.name}: "
                       f"{parent_repo} with a {how} on {outcome.labelled} masked images "
                       f"({plan.label_fraction:.0%}) by job {job_id}; test Dice {dice}."
                       + (" Few masks: read its metrics as fragile." if few else ""),
        "evaluation": evaluation_rows(plan, row.name, outcome.metrics),
        "task": {"kind": "segmentation", "classes": classes,
                 "labelled_images": outcome.labelled, "few_labels": few,
                 "curves": outcome.history, "curves_png": curves},
    })
    return card


def run_segmentation(job: JobRow, lease: int, sessions: Sessions, store: BlobStore,
                     log: Log) -> None:
    import torch
    from safetensors.torch import save

    from zoo.registry import Registry, prepare
    from zoo.segmentation import segmenter_from_encoder
    from zoo.training.segment import SegmentSettings, finetune_segmenter

    plan = FinetunePlan.model_validate(job.params)
    registry = Registry(sessions, store)
    row, dataset, device = start_run(job, lease, sessions, store, plan.dataset_id,
                                     plan.device)
    parent, encoder, _ = parent_encoder(registry, plan, job, store)
    report = report_to(sessions, job.id, lease)
    classes = mask_classes(row, dataset)
    norm = parent.normalization
    model = segmenter_from_encoder(encoder, len(classes),
                                   list(plan.patch_size or dataset.image_size), norm.mean,
                                   norm.std)
    settings = SegmentSettings(
        label_fraction=plan.label_fraction, seed=plan.seed, epochs=plan.epochs, lr=plan.lr,
        batch_size=plan.batch_size, device=torch.device(device),
        encoder_lr_multiplier=plan.encoder_lr_multiplier, augmentations=plan.augmentations,
        patch_size=plan.patch_size, freeze_encoder=plan.mode == "linear_probe")
    outcome = finetune_segmenter(model, dataset, settings, report)
    scores = {f"test_{k}": _finite(outcome.metrics.get(k)) for k in METRICS}
    report({"phase": "registering"}, scores, None)
    curves = save_curves(job.id, outcome.history,
                         f"job {job.id}: segmentation on {row.name}")
    # A ViT is rebuilt for the images (rounded up to whole patches): its card says that
    # size, which its position embeddings fit; CNNs take any size and say the images'.
    size = outcome.model.max_size or list(dataset.image_size)
    card = segmentation_card(parent, plan, row, job.id, outcome, classes, curves, size)
    state = {k: v.float().contiguous() for k, v in outcome.model.state_dict().items()}
    registry.register(prepare(card, save(state)), family=parent.pretext.family,
                      owner=plan.namespace, private=plan.private,
                      within=complete(job.id, lease, lambda stored: {
                          **outcome_of(stored, plan.private), "task": "segmentation",
                          "evaluation": scores, **({"curves": curves} if curves else {}),
                          "seconds": round(outcome.seconds, 1)}))
