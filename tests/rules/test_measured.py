"""TaskAlign's own measurements reach the answers they bear on, and only those."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rules import TaskProfile, default_engine

RUNS = (Path(__file__).resolve().parents[2] / "docs" / "study"
        / "segmentation_label_efficiency.jsonl")


def measured_notes(**profile: object) -> list[str]:
    answer = default_engine().recommend(TaskProfile.model_validate(profile))
    return [n.text for n in answer.notes if "Measured by TaskAlign" in n.text]


def test_segmentation_answers_carry_what_our_runs_showed() -> None:
    [kvasir] = measured_notes(task="segmentation", modality="endoscopy", labeled=80,
                              unlabeled=700)
    [hippocampus] = measured_notes(task="segmentation", modality="mri",
                                   dimensionality="3d", labeled=18, unlabeled=160)
    # The figures in the notes are the means of the recorded runs, not retyped by hand.
    runs = [json.loads(line) for line in RUNS.read_text().splitlines()]
    for note, dataset in ((kvasir, "kvasirseg"), (hippocampus, "hippocampus")):
        for init in ("dense_contrast", "random"):
            for fraction in (0.1, 1.0):
                dice = [r["test"]["dice"] for r in runs if (r["dataset"], r["init"],
                                                            r["fraction"]) ==
                        (dataset, init, fraction)]
                assert len(dice) == 3
                assert f"{statistics.fmean(dice):.3f}" in note, (dataset, init, fraction)


# The classification notes' figures are checked against the seed cards they cite in
# test_project_evidence.py.


def test_other_tasks_and_modalities_get_no_such_note() -> None:
    assert measured_notes(task="classification", modality="endoscopy", labeled=80,
                          unlabeled=700) == []
    assert measured_notes(task="classification", modality="pet", label_regime="low") == []
    assert measured_notes(task="segmentation", modality="mri", dimensionality="2d",
                          labeled=80, unlabeled=700) == []
    assert measured_notes(task="segmentation", modality="ct", labeled=80,
                          unlabeled=700) == []


def test_3d_classification_answers_carry_the_3d_seed_cards() -> None:
    [ct] = measured_notes(task="classification", modality="ct", label_regime="low")
    assert "resnet10-3d.rubik-adrenalmnist3d" in ct and "worse than the best random" in ct
    [mri] = measured_notes(task="classification", modality="mri", dimensionality="3d",
                           label_regime="low")
    assert "resnet10-3d.genesis-vesselmnist3d" in mri
    assert measured_notes(task="classification", modality="ct", dimensionality="2d",
                          label_regime="low") == []  # the 3D card says nothing of slices
