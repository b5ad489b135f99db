"""The card a fine-tune job registers: a valid encoder name whatever the dataset is
called, the parent's facts, and the job's lineage and test scores."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.jobs.plan import FinetunePlan
from service.jobs.runner import task_model_card
from zoo.cards import EncoderCard, StoredCard
from zoo.catalog import DatasetRow

SEED = Path(__file__).resolve().parents[3] / "zoo" / "seed"


@pytest.mark.parametrize("dataset_name", ["breastmnist", "breast.v2", "Breast_MNIST-"])
def test_task_model_card_is_a_valid_card(dataset_name: str) -> None:
    raw = json.loads((SEED / "resnet18-2d.simclr-pneumoniamnist" / "card.json").read_text())
    repo = f"taskalign/{raw['name']}"
    parent = StoredCard(**raw, repo_id=repo, revision=1, commit="c" * 40,
                        created_at=datetime.now(UTC), feature_dim=128,
                        onnx_parity_max_abs_diff=0.0, files={})
    plan = FinetunePlan(encoder=repo, encoder_revision="1", encoder_commit="c" * 40,
                        dataset_id=4, namespace="alice", private=True, mode="full",
                        label_fraction=0.1, seed=0, epochs=2, lr=1e-3, batch_size=32,
                        device="cpu")
    row = DatasetRow(id=4, name=dataset_name, modality="ultrasound")
    from zoo.training.finetune import FinetuneOutcome

    outcome = FinetuneOutcome(
        model=None, metrics={"auc": 0.81234, "acc": 0.7},
        report={"ci95": {"auc": (0.7, 0.9), "acc": (0.6, 0.8)}, "threshold": 0.4,
                "calibration_ece": 0.05, "confusion_matrix": [[3, 1], [2, 4]],
                "balanced_accuracy": 0.71, "majority_rate": 0.6},
        history=[{"epoch": 1, "train_loss": 0.6, "val_auc": 0.7}], labelled=8,
        labelled_per_class_min=4, seconds=1.0)
    card = EncoderCard.model_validate(task_model_card(parent, plan, row, 7, outcome,
                                                      ["normal", "pneumonia"], None, [64, 64]))
    assert card.input_size == [64, 64]  # trained at the dataset's size, not the parent's
    assert card.task.classes == ["normal", "pneumonia"] and card.task.few_labels
    assert card.evaluation[0].ci95 == (0.7, 0.9)
    assert card.name.startswith("resnet18-2d.ft-job7-")  # the short name; the owner is apart
    assert card.parent == card.lineage["parent"] == repo  # the parent's full repository id
    assert card.lineage["parent_commit"] == "c" * 40
    assert card.lineage["job_id"] == 7 and card.lineage["params"]["epochs"] == 2
    assert card.lineage["params"]["namespace"] == "alice"
    assert card.lineage["params"]["private"] is True
    assert [(e.protocol, e.metric, e.value) for e in card.evaluation] == [
        ("fine_tune", "AUC", 0.8123), ("fine_tune", "ACC", 0.7)]
