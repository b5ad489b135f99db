"""The encoder card: everything a user needs to trust and use a set of weights.

Modelled on timm's pretrained configs (facts about weights) and MONAI bundle metadata
(inputs described in medical terms). Stored as config.json beside the weights.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*[a-z0-9]\.[a-z0-9][a-z0-9-]*[a-z0-9]$"
# Largest encoder input accepted: 256^3 voxels, or 4096^2 pixels (one channel).
MAX_INPUT_VALUES = 256**3
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib")


class Architecture(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Key in zoo.architectures.ARCHITECTURES, e.g. resnet18.")
    args: dict[str, Any] = Field(default_factory=dict, description="Builder arguments.")


class Normalization(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.5])
    scale: Literal["unit", "hounsfield"] = Field(
        "unit", description="unit: pixels divided by 255 (or max) before mean/std.")
    window: tuple[float, float] | None = Field(None, description="Intensity window, e.g. CT HU.")


class Pretext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method_id: str = Field(description="Method id from the rules catalog (GET /v1/methods).")
    family: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class PretrainingData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    licence: str
    split: str = "train"
    images: int | None = None
    citation: str | None = None


class Evaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    protocol: Literal["linear_probe", "knn", "fine_tune", "random_init_fine_tune",
                      "random_init_linear_probe", "random_init_knn"]
    label_fraction: float = Field(ge=0, le=1)
    metric: str
    value: float
    spread: float | None = Field(None, description="Sample standard deviation of the metric: "
                                  "over the seeds listed (protocol 1), over replicates x label "
                                  "subsets (protocol 2).")
    seeds: list[int] = Field(default_factory=list, description="Label-subset seeds.")
    split: str = "test"
    ci95: tuple[float, float] | None = Field(None, description="95 % bootstrap interval "
                                             "over test images (percentile method).")
    notes: str | None = None
    protocol_version: Literal[1, 2] = Field(1, description="2: every choice made on a "
                                            "validation subset scaled like the training "
                                            "subset, several replicates, paired intervals.")
    replicates: list[int] = Field(default_factory=list, description="Pretraining seeds (SSL "
                                  "rows) or random-init seeds (random_init_* rows) averaged.")
    runs: int | None = Field(None, ge=1, description="Runs averaged: replicates x subsets.")
    majority_rate: float | None = Field(None, description="Test accuracy of always answering "
                                        "the most frequent class, to read ACC against.")
    tuned: dict[str, Any] | None = Field(None, description="The hyperparameter chosen on "
                                         "validation: name, grid and the value of each run.")
    difference_ci95: tuple[float, float] | None = Field(
        None, description="Paired bootstrap 95 % interval over test images of this row's "
        "mean AUC minus the random inits' mean AUC.")
    difference_vs_best_ci95: tuple[float, float] | None = Field(
        None, description="The same against the best single random init.")
    test_noise: str | None = Field(None, description="Set on robustness rows: the noise "
                                   "added to the test images (kind:sigma), probes unchanged.")


class TaskHead(BaseModel):
    """What turns an encoder into a task model: the head it carries and what it predicts.

    A task model's weights hold `encoder.*` (the encoder as its card describes it) and
    the head's; its ONNX graph takes images scaled to [0, 1], normalises them itself and
    returns class probabilities: one row per image for classification (`head.*`), one map
    per class at the input's resolution for segmentation (`decoder.*`, `skips.*`,
    `head.*` of `zoo.segmentation.Segmenter`, whose classes start with the background)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["classification", "segmentation"] = "classification"
    classes: list[str] = Field(min_length=2, max_length=1000,
                               description="Class names in output order; for segmentation "
                               "the mask values, background (0) first.")
    threshold: float | None = Field(None, ge=0, le=1, description="Binary tasks: the "
                                    "probability of class 1 above which an image is called "
                                    "positive (chosen on validation).")
    threshold_rule: str | None = None
    calibration_ece: float | None = Field(None, description="Expected calibration error "
                                          "on test (15 equal-width confidence bins).")
    confusion_matrix: list[list[int]] | None = Field(
        None, description="Test counts, rows = true class, columns = predicted class.")
    balanced_accuracy: float | None = None
    majority_rate: float | None = Field(None, description="Test accuracy of always "
                                        "answering the most frequent training class.")
    labelled_images: int | None = Field(None, description="Labelled training images used.")
    labelled_per_class_min: int | None = None
    few_labels: bool = Field(False, description="Trained on fewer than 10 labelled images "
                             "of some class: read its metrics as fragile.")
    curves: list[dict[str, float]] = Field(default_factory=list,
                                           description="Per-epoch train loss and validation "
                                           "metric.")
    curves_png: str | None = Field(None, description="Where the plotted curves are (job "
                                   "artifact URL).")

    @model_validator(mode="after")
    def _classification_fields(self) -> TaskHead:
        # A decision threshold and a confusion matrix are per-image facts; a segmentation
        # card reports its Dice, HD95 and surface Dice as evaluation rows instead.
        if self.kind == "segmentation" and (self.threshold is not None
                                            or self.confusion_matrix is not None):
            raise ValueError("threshold and confusion_matrix describe classification tasks; "
                             "a segmentation task reports per-class metrics in evaluation")
        return self


class FileEntry(BaseModel):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class EncoderCard(BaseModel):
    """What an uploader declares. The server adds files, revision and created_at."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=96,
                      description="arch.tag, e.g. resnet18-2d.simclr-pneumoniamnist")
    architecture: Architecture
    spatial_dims: Literal[2, 3]
    in_channels: int = Field(ge=1, le=16)
    input_size: list[int] = Field(min_length=2, max_length=3)
    normalization: Normalization = Field(default_factory=Normalization)
    modality: str
    pretext: Pretext
    pretraining_data: PretrainingData
    weights_licence: str = "CC-BY-4.0"
    evaluation: list[Evaluation] = Field(default_factory=list)
    evaluation_protocol: dict[str, Any] | None = Field(
        None, description="How the evaluation rows were produced: grids, tuning split, "
        "what the spread and intervals mean.")
    parent: str | None = Field(None, description="Encoder this one was trained from.")
    lineage: dict[str, Any] = Field(default_factory=dict,
                                    description="e.g. dataset and job that produced it.")
    description: str = ""
    task: TaskHead | None = Field(None, description="Set for task models (encoder + head); "
                                  "absent for encoders.")

    @field_validator("input_size")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(s < 4 or s > 1024 for s in v):
            raise ValueError("input_size entries must be between 4 and 1024")
        return v

    @model_validator(mode="after")
    def _bounded_input(self) -> EncoderCard:
        # Checked before any model is built: registration runs a probe through the network
        # and exports it, which for a 1024^3 volume would take minutes and gigabytes.
        if len(self.input_size) != self.spatial_dims:
            raise ValueError(f"input_size has {len(self.input_size)} entries; spatial_dims "
                             f"is {self.spatial_dims}")
        values = self.in_channels * math.prod(self.input_size)
        if values > MAX_INPUT_VALUES:
            raise ValueError(f"input of {values:,} values (channels x input_size) is over the "
                             f"limit of {MAX_INPUT_VALUES:,} (256^3 voxels, 4096^2 pixels)")
        return self


# Fields of a StoredCard that the server measures or assigns. A card downloaded from the
# zoo carries them; on upload they are dropped and computed again, never trusted.
SERVER_FIELDS = ("repo_id", "revision", "commit", "created_at", "feature_dim", "parameters",
                 "onnx_parity_max_abs_diff", "files")


def declared_part(card: dict[str, Any]) -> dict[str, Any]:
    """What an uploader declares: a served card (config.json) less the server's fields, so
    that a downloaded card can be uploaded again as a new revision."""
    return {k: v for k, v in card.items() if k not in SERVER_FIELDS}


class StoredCard(EncoderCard):
    """The card as served: declared facts plus what the server measured and stored."""

    repo_id: str | None = Field(None, description="owner/name of the repository; absent "
                                "from cards stored before repositories had owners.")
    revision: int
    # Absent from config.json: the commit id is a hash over the files, config.json included.
    commit: str | None = None
    created_at: datetime
    feature_dim: int
    parameters: int | None = Field(None, description="Trainable parameters of the network, "
                                   "counted at registration; absent from older cards.")
    onnx_parity_max_abs_diff: float
    files: dict[str, FileEntry]


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def is_pickle_name(filename: str) -> bool:
    return filename.lower().endswith(PICKLE_SUFFIXES)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
