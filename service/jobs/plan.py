"""Job planning: a job request, the dataset's facts, the encoder's card and the rules
engine's answer in; the stored, fully resolved job parameters out.

Nothing here knows about HTTP. Every "auto" value is resolved here and recorded in the
plan's `auto` section with where it came from: fine-tuning settings from
rules/tables/finetune.yaml (review sections and references, or a TaskAlign default),
pretraining settings from zoo/training/pretrain_defaults.yaml and the method's
hyperparameters and augmentations from the rules engine. The runner executes the plan and
decides nothing.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from rules import Engine, TaskProfile
from rules.recommendation import AvoidedAugmentation, FinetuneDefaults, Sourced
from zoo.access import ORG, default_owner
from zoo.cards import NAME_PATTERN, slug
from zoo.catalog import DatasetRow, RevisionRow
from zoo.presets import preset_for
from zoo.registry import Registry
from zoo.training.augment_names import COLOUR_ONLY
from zoo.training.augment_names import KNOWN as IMPLEMENTED
from zoo.training.pretrain_defaults import pretrain_defaults
from zoo.training.seg_augment_names import REFUSED as SEGMENTATION_REFUSED
from zoo.training.seg_augment_names import SEGMENTATION as SEGMENTATION_IMPLEMENTED

from ..problems import Invalid
from ..users import User

JobType = Literal["finetune", "pretrain"]
FinetuneTask = Literal["classification", "segmentation"]


class InvalidJob(Invalid):
    """A job request the planner refuses (422), naming the field to fix."""

    code = "invalid_job"


Auto = Literal["auto"]
T = TypeVar("T")
# Settings only full fine-tuning reads: a linear probe or a pretrain job would silently
# ignore them, so such a request that sets them is refused. (`encoder`, `encoder_revision`
# and `mode` have always been ignored by pretrain jobs and still are.)
FULL_ONLY = ("encoder_lr_multiplier", "augmentations")


def given_full_only(spec: JobCreate) -> list[str]:
    return [f for f in FULL_ONLY if getattr(spec, f) != "auto"]


class JobCreate(BaseModel):
    """A job request; every field left at "auto" is resolved by the planner."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: JobType
    dataset_id: int = Field(ge=0, le=2**31 - 1)
    eval_dataset_id: int | None = Field(
        None, ge=0, le=2**31 - 1, description="Labelled dataset the new encoder is evaluated "
        "on (pretrain); default the training dataset, and no evaluation when that is "
        "unlabelled.")
    encoder: str | None = Field(None, description="Zoo encoder to fine-tune (finetune).")
    encoder_revision: str | None = None
    task: Literal["auto", "classification", "segmentation"] = Field(
        "auto", description="finetune: segmentation on a dataset with masks (the default "
        "there), classification on one with image labels.")
    mode: Literal["auto", "linear_probe", "full"] = "auto"
    label_fraction: float = Field(1.0, gt=0, le=1)
    patch_size: list[int] | None = Field(
        None, min_length=2, max_length=3, description="Segmentation: train on random crops "
        "of this size (and predict with sliding windows); default the whole image.")
    epochs: int | Auto = Field("auto", description="1 to 500, or auto.")
    lr: float | Auto = Field("auto", description="1e-7 to 1, or auto.")
    encoder_lr_multiplier: float | Auto = Field(
        "auto", description="Encoder learning rate as a fraction of the head's, 0 to 1 "
        "(finetune, mode full).")
    batch_size: int | Auto = Field("auto", description="2 to 4096, or auto.")
    augmentations: list[str] | Auto = Field(
        "auto", description="Augmentations applied while fine-tuning (finetune, mode full).")
    seed: int = Field(0, ge=0, le=2**31)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    method: str | None = Field(None, description="Pretext method id (pretrain).")
    name: str | None = Field(None, max_length=96, description="Name of the new encoder "
                             "(pretrain), in the caller's namespace; default "
                             "arch-Nd.method-dataset-jobID.")
    private: bool = Field(True, description="Whether the resulting encoder repository is "
                          "private. It is derived from the caller's private dataset, so it "
                          "is private unless this is set to false.")


class DatasetFacts(BaseModel):
    """What planning needs to know about a dataset, measured when it was registered."""

    id: int
    name: str
    modality: str | None
    spatial_dims: int
    channels: int
    image_size: list[int]
    num_classes: int
    train_images: int
    labelled: bool = True
    # Train images per class index, as measured at registration; empty when unknown.
    train_per_class: dict[int, int] = {}
    # segmentation (masks), classification (image labels only) or None (images only).
    task: FinetuneTask | None = "classification"
    mask_classes: list[str] = Field(default_factory=list, description="Names of the mask "
                                    "values, background first; empty without masks.")

    @classmethod
    def from_row(cls, row: DatasetRow) -> DatasetFacts:
        train = row.summary["splits"]["train"]
        task = row.summary.get("task", "classification" if row.labelled else None)
        return cls(id=row.id, name=row.name, modality=row.modality,
                   spatial_dims=row.spatial_dims, channels=row.channels,
                   image_size=list(row.image_size), num_classes=row.num_classes,
                   train_images=train["images"], labelled=row.labelled,
                   train_per_class={int(c): int(n)
                                    for c, n in train.get("per_class", {}).items()},
                   task=task, mask_classes=list(row.summary.get("mask_classes") or []))

    @property
    def slug(self) -> str:
        """The name as it may appear in an encoder name (lower case, digits, '-')."""
        return slug(self.name)


class FinetunePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encoder: str
    encoder_revision: str
    encoder_commit: str | None = Field(None, description="The exact revision resolved at "
                                       "submission; older plans lack it.")
    dataset_id: int
    namespace: str = ORG
    private: bool = True
    task: FinetuneTask = "classification"
    mode: Literal["linear_probe", "full"] = Field(description="Segmentation: linear_probe "
                                                  "keeps the encoder frozen and trains the "
                                                  "decoder.")
    label_fraction: float
    patch_size: list[int] | None = None
    seed: int
    epochs: int
    lr: float
    encoder_lr_multiplier: float = 1.0
    batch_size: int
    augmentations: list[str] = []
    device: Literal["auto", "cpu", "cuda"]
    labelled_per_class_min: int | None = Field(
        None, description="Fewest labelled training images of any class this job trains on; "
        "older plans lack it.")
    few_labels: bool = Field(False, description="Fewer than 10 labelled training images in "
                             "some class: scores from so few labels are noisy.")
    auto: dict[str, Any] = {}


class PretrainPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: int
    namespace: str = ORG
    private: bool = True
    method: str
    architecture: dict[str, Any]
    profile: dict[str, Any]
    name: str | None
    name_template: str
    epochs: int
    lr: float
    batch_size: int
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    evaluation: dict[str, Any] = Field(
        default_factory=lambda: dict(pretrain_defaults().evaluation))
    eval_dataset_id: int | None = Field(None, description="Labelled dataset to evaluate "
                                        "on; None: the training dataset.")
    evaluation_skipped: str | None = Field(None, description="Why the encoder is not "
                                           "evaluated (an unlabelled dataset and no "
                                           "eval_dataset_id).")
    auto: dict[str, Any] = {}


# Allowed values of the numeric settings, and how to say so.
LIMITS: dict[str, tuple[float, float, str]] = {
    "epochs": (1, 500, "between 1 and 500"),
    "lr": (1e-7, 1.0, "between 1e-07 and 1"),
    "encoder_lr_multiplier": (1e-6, 1.0, "above 0 and at most 1 (mode linear_probe keeps "
                                         "the encoder frozen)"),
    "batch_size": (2, 4096, "between 2 and 4096"),
}


def check_limits(spec: JobCreate) -> None:
    for name, (lo, hi, allowed) in LIMITS.items():
        value = getattr(spec, name)
        if value != "auto" and not lo <= value <= hi:
            raise InvalidJob(name, f"{name} must be 'auto' or {allowed}")


def owned_dataset(session: Session, dataset_id: int, user: User,
                  field: str = "dataset_id") -> DatasetFacts:
    row = session.get(DatasetRow, dataset_id)
    if row is None or not user.may_access(row.owner):
        raise InvalidJob(field, f"no dataset {dataset_id} of yours (see GET /v1/datasets)")
    return DatasetFacts.from_row(row)


def plan_job(spec: JobCreate, user: User, registry: Registry,
             engine: Engine) -> FinetunePlan | PretrainPlan:
    """Check a request against the stored dataset and encoder and resolve every "auto";
    raises InvalidJob naming the field to fix."""
    if spec.type == "finetune" and spec.eval_dataset_id is not None:
        raise InvalidJob("eval_dataset_id", "eval_dataset_id only applies to pretrain jobs; "
                                            "a fine-tune is scored on its dataset's test split")
    with registry.sessions() as session:
        dataset = owned_dataset(session, spec.dataset_id, user)
        eval_dataset = None if spec.eval_dataset_id is None else owned_dataset(
            session, spec.eval_dataset_id, user, "eval_dataset_id")
    check_limits(spec)
    # Results go to the caller's namespace, with the visibility asked for.
    where = {"namespace": default_owner(user), "private": spec.private}
    if spec.type == "pretrain":
        given = given_full_only(spec)
        if given:
            raise InvalidJob(given[0], f"{', '.join(given)} only apply to finetune jobs")
        return plan_pretrain(spec, dataset, eval_dataset).model_copy(update=where)
    check_labelled(dataset)  # before the encoder: no encoder makes this dataset usable
    task = finetune_task(spec, dataset)
    if not spec.encoder:
        raise InvalidJob("encoder", "finetune jobs need an encoder from the zoo")
    revision = registry.revision(spec.encoder, spec.encoder_revision, user)
    if revision is None:
        raise InvalidJob("encoder", f"unknown encoder '{spec.encoder}' (revision "
                                 f"{spec.encoder_revision or 'latest'}); ids are owner/name, "
                                 "see GET /v1/encoders")
    planner = plan_segmentation if task == "segmentation" else plan_finetune
    return planner(spec, dataset, revision, engine).model_copy(update=where)


def finetune_task(spec: JobCreate, dataset: DatasetFacts) -> FinetuneTask:
    """The task a fine-tune trains: the one asked for, if the dataset has what it needs
    (masks for segmentation, image labels for classification), else the dataset's own."""
    has_masks, has_labels = dataset.task == "segmentation", dataset.num_classes > 0
    if spec.task == "auto":
        return "segmentation" if has_masks else "classification"
    if spec.task == "segmentation" and not has_masks:
        raise InvalidJob("task", f"dataset {dataset.name} has no masks; segmentation needs a "
                                 "dataset with masks ({split}_masks in an npz, images/ + "
                                 "masks/, or imagesTr/ + labelsTr/)")
    if spec.task == "classification" and not has_labels:
        raise InvalidJob("task", f"dataset {dataset.name} has masks but no image labels; "
                                 "fine-tune it for segmentation (task auto or segmentation)")
    if spec.task == "classification" and spec.patch_size is not None:
        raise InvalidJob("patch_size", "patch_size only applies to segmentation")
    return spec.task


def check_compatible(encoder: str, card: dict[str, Any], dataset: DatasetFacts) -> None:
    if card["spatial_dims"] != dataset.spatial_dims:
        raise InvalidJob("encoder", f"{encoder} is a {card['spatial_dims']}D encoder; dataset "
                                 f"{dataset.name} is {dataset.spatial_dims}D")
    if card["in_channels"] != dataset.channels:
        raise InvalidJob("encoder", f"{encoder} expects {card['in_channels']} channel(s); "
                                 f"dataset {dataset.name} has {dataset.channels}")
    if card["architecture"]["name"] == "vit" and list(card["input_size"]) != dataset.image_size:
        raise InvalidJob("encoder", f"{encoder} is a ViT for {card['input_size']} inputs; "
                                 f"dataset images are {dataset.image_size}")


def finetune_profile(dataset: DatasetFacts, card: dict[str, Any],
                     label_fraction: float, labelled: int | None = None) -> TaskProfile:
    """The rules engine's view of a fine-tuning job: the labels it will actually use
    (`labelled`, counted from the subset training draws, where the class counts are known)."""
    labeled = labelled or max(1, round(dataset.train_images * label_fraction))
    return TaskProfile(task="classification", modality=dataset.modality or card["modality"],
                       labeled=labeled, unlabeled=dataset.train_images - labeled,
                       classes=dataset.num_classes,
                       dimensionality=f"{dataset.spatial_dims}d", top_k=1)


def _resolve(requested: T | Auto, default: Sourced[T], name: str,
             used: dict[str, Any]) -> T:
    """The requested value, or the rules' default, recording where an auto value came from."""
    if requested != "auto":
        return requested
    used[name] = default.model_dump(exclude_none=True)
    return default.value


# Fine-tuning needs this many labelled training images of every class (one image per class
# cannot separate a class from the noise); below FEW_LABELS a job runs but says so.
MIN_LABELLED_PER_CLASS = 2
FEW_LABELS = 10


def labelled_per_class(per_class: dict[int, int], fraction: float, seed: int) -> dict[int, int]:
    """Labelled training images per class that a fine-tune at `fraction` gets: the subset
    training draws (zoo.training.evaluate.label_subset), drawn here from the class counts so
    that this check and training cannot disagree."""
    import torch

    from zoo.training.evaluate import label_subset

    classes = sorted(per_class)
    labels = torch.repeat_interleave(torch.tensor(classes),
                                     torch.tensor([per_class[c] for c in classes]))
    values, counts = torch.unique(labels[label_subset(labels, fraction, seed)],
                                  return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _round_up(x: float, digits: int = 3) -> float:
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
    return math.ceil(x * scale - 1e-9) / scale


def smallest_label_fraction(per_class: dict[int, int], seed: int,
                            need: int = MIN_LABELLED_PER_CLASS) -> float | None:
    """The smallest label_fraction (3 significant digits) that leaves `need` labelled images
    of every class; None when a class has fewer training images than that."""
    if min(per_class.values()) < need:
        return None
    # A start from the rounding label_subset does, checked (and raised) against it.
    fraction = _round_up((need - 0.5) / min(per_class.values()))
    while fraction < 1 and min(labelled_per_class(per_class, fraction, seed).values()) < need:
        fraction = _round_up(fraction * 1.001)
    return min(fraction, 1.0)


def check_label_counts(dataset: DatasetFacts, fraction: float, seed: int) -> dict[int, int]:
    """Labelled images per class the job will train on; refuses fewer than
    MIN_LABELLED_PER_CLASS of any class, naming the smallest fraction that works."""
    counts = labelled_per_class(dataset.train_per_class, fraction, seed)
    worst = min(counts, key=lambda c: (counts[c], c))
    if counts[worst] >= MIN_LABELLED_PER_CLASS:
        return counts
    have = (f"label_fraction {fraction:g} leaves {counts[worst]} labelled training image(s) "
            f"per class at the fewest (class {worst}: {counts[worst]} of its "
            f"{dataset.train_per_class[worst]})")
    need = f"fine-tuning needs at least {MIN_LABELLED_PER_CLASS} per class"
    smallest = smallest_label_fraction(dataset.train_per_class, seed)
    if smallest is None:
        short = min(dataset.train_per_class, key=lambda c: dataset.train_per_class[c])
        raise InvalidJob("label_fraction", f"{have}; {need}, and class {short} has only "
                                           f"{dataset.train_per_class[short]} training "
                                           "image(s) in all: add images of it")
    raise InvalidJob("label_fraction", f"{have}; {need}: the smallest label_fraction that "
                                       f"gives that is {smallest:g}")


def check_labelled(dataset: DatasetFacts) -> None:
    if not dataset.labelled:
        raise InvalidJob("dataset_id", f"dataset {dataset.name} is unlabelled (images only) "
                                       "and fine-tuning needs labels: upload it with labels, "
                                       "or use it to pretrain (type pretrain, with a labelled "
                                       "eval_dataset_id to evaluate the encoder)")


def resolve_settings(spec: JobCreate, defaults: FinetuneDefaults, probe: str = "linear_probe",
                     hint: str = " (set mode to full to use them)"
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fine-tuning values, each asked for or the rules' default, and where the auto
    ones came from; settings a frozen encoder would ignore are refused, not dropped."""
    used: dict[str, Any] = {}
    values = {name: _resolve(getattr(spec, name), getattr(defaults, name), name, used)
              for name in ("mode", "epochs", "lr", "encoder_lr_multiplier", "batch_size",
                           "augmentations")}
    if values["mode"] == "linear_probe":
        given = given_full_only(spec)
        if given:
            how = "was chosen for these labels" if spec.mode == "auto" else "was asked for"
            raise InvalidJob(given[0], f"{', '.join(given)} only apply to mode full; "
                                       f"{probe} {how}{hint}")
    return values, used


def plan_finetune(spec: JobCreate, dataset: DatasetFacts, revision: RevisionRow,
                  engine: Engine) -> FinetunePlan:
    check_labelled(dataset)
    if spec.patch_size is not None:
        raise InvalidJob("patch_size", "patch_size only applies to segmentation")
    card = revision.card
    check_compatible(spec.encoder or "", card, dataset)
    counts = (check_label_counts(dataset, spec.label_fraction, spec.seed)
              if dataset.train_per_class else None)
    profile = finetune_profile(dataset, card, spec.label_fraction,
                               sum(counts.values()) if counts else None)
    defaults: FinetuneDefaults = engine.finetune_defaults(profile)
    advice = engine.recommend(profile)
    if spec.augmentations != "auto":
        check_augmentations(spec.augmentations, advice.augmentations.avoid, engine,
                            dataset.channels)
    values, used = resolve_settings(spec, defaults)
    return FinetunePlan(
        encoder=spec.encoder or "", encoder_revision=str(revision.number),
        encoder_commit=revision.commit,
        dataset_id=dataset.id, label_fraction=spec.label_fraction, seed=spec.seed,
        device=spec.device, **values,
        labelled_per_class_min=min(counts.values()) if counts else None,
        few_labels=bool(counts) and min(counts.values()) < FEW_LABELS,
        auto={"label_regime": defaults.label_regime,
              "derived_from": defaults.label_regime_source,
              "regime_rule": defaults.label_regime_rule,
              "advice": advice.label_advice.evaluation,
              "advice_rule": advice.label_advice.rule,
              "settings": used})


def masked_images(dataset: DatasetFacts, fraction: float) -> int:
    """Training images whose masks a segmentation job at `fraction` uses: the count that
    zoo.training.segment.mask_subset draws; refuses fewer than two (batch statistics and
    any validation-free learning need more than one), naming the smallest fraction."""
    n = dataset.train_images
    take = max(1, round(n * fraction))
    if take >= MIN_LABELLED_PER_CLASS:
        return take
    if n < MIN_LABELLED_PER_CLASS:
        raise InvalidJob("label_fraction", f"dataset {dataset.name} has {n} training "
                                           "image(s) with masks; segmentation needs at least "
                                           f"{MIN_LABELLED_PER_CLASS}")
    smallest = _round_up((MIN_LABELLED_PER_CLASS - 0.5) / n)
    while round(n * smallest) < MIN_LABELLED_PER_CLASS:
        smallest = _round_up(smallest * 1.001)
    raise InvalidJob("label_fraction", f"label_fraction {fraction:g} leaves {take} of "
                                       f"{n} training masks; segmentation needs at least "
                                       f"{MIN_LABELLED_PER_CLASS}: the smallest label_fraction "
                                       f"that gives that is {min(smallest, 1.0):g}")


def check_patch(patch: list[int] | None, dataset: DatasetFacts) -> None:
    if patch is None:
        return
    if len(patch) != dataset.spatial_dims:
        raise InvalidJob("patch_size", f"patch_size {patch} has {len(patch)} axes; the "
                                       f"dataset is {dataset.spatial_dims}D")
    if any(p < 8 or p > s for p, s in zip(patch, dataset.image_size, strict=True)):
        raise InvalidJob("patch_size", f"patch_size {patch} must lie between 8 and the image "
                                       f"size {dataset.image_size} on every axis")


def segmentation_augmentations(names: list[str], avoid: list[AvoidedAugmentation],
                               engine: Engine, channels: int, requested: bool
                               ) -> tuple[list[str], list[str]]:
    """(kept, dropped with why). Asked-for names are checked as strictly as for
    classification, against what segmentation applies; defaults that the rules advise
    against for this dataset, or that need colour it lacks, are dropped and said so."""
    if requested:
        refused = [f"{n} ({SEGMENTATION_REFUSED[n]})" for n in names
                   if n in SEGMENTATION_REFUSED]
        if refused:
            raise InvalidJob("augmentations", f"not used for segmentation: {refused}")
        missing = [n for n in names if n in engine.kb.augmentations
                   and n not in SEGMENTATION_IMPLEMENTED]
        if missing:
            raise InvalidJob("augmentations", f"not implemented for segmentation: {missing}; "
                                              "implemented: "
                                              f"{', '.join(sorted(SEGMENTATION_IMPLEMENTED))}")
        check_augmentations(names, avoid, engine, channels, implemented=SEGMENTATION_IMPLEMENTED)
        return names, []
    advised_against = {a.name: a.rule for a in avoid}
    kept, dropped = [], []
    for n in names:
        if n in advised_against:
            dropped.append(f"{n} (rule {advised_against[n]})")
        elif n in COLOUR_ONLY and channels != 3:
            dropped.append(f"{n} (needs RGB images)")
        else:
            kept.append(n)
    return kept, dropped


def plan_segmentation(spec: JobCreate, dataset: DatasetFacts, revision: RevisionRow,
                      engine: Engine) -> FinetunePlan:
    """A U-Net-style decoder on the encoder, trained on the dataset's masks; defaults from
    the segmentation entries of rules/tables/finetune.yaml."""
    card = revision.card
    check_compatible(spec.encoder or "", card, dataset)
    check_patch(spec.patch_size, dataset)
    masked = masked_images(dataset, spec.label_fraction)
    profile = TaskProfile(task="segmentation", modality=dataset.modality or card["modality"],
                          labeled=masked, unlabeled=dataset.train_images - masked,
                          dimensionality=f"{dataset.spatial_dims}d", top_k=1)
    defaults: FinetuneDefaults = engine.finetune_defaults(profile)
    advice = engine.recommend(profile)
    values, used = resolve_settings(spec, defaults, probe="linear_probe (frozen encoder)",
                                    hint="")
    kept, dropped = segmentation_augmentations(
        values["augmentations"], advice.augmentations.avoid, engine, dataset.channels,
        requested=spec.augmentations != "auto")
    values["augmentations"] = kept
    if dropped:
        used["augmentations_dropped"] = dropped
    return FinetunePlan(
        encoder=spec.encoder or "", encoder_revision=str(revision.number),
        encoder_commit=revision.commit, dataset_id=dataset.id, task="segmentation",
        label_fraction=spec.label_fraction, patch_size=spec.patch_size, seed=spec.seed,
        device=spec.device, **values, labelled_per_class_min=None,
        few_labels=masked < FEW_LABELS,
        auto={"label_regime": defaults.label_regime,
              "derived_from": defaults.label_regime_source,
              "regime_rule": defaults.label_regime_rule,
              "advice": advice.label_advice.evaluation,
              "advice_rule": advice.label_advice.rule,
              "masked_images": masked, "settings": used})


def check_augmentations(names: list[str], avoid: list[AvoidedAugmentation],
                        engine: Engine, channels: int,
                        implemented: frozenset[str] | set[str] = IMPLEMENTED) -> None:
    """Names from the rules catalog that the training library implements, that fit the
    images' channels, and that the rules do not advise against for this dataset."""
    known = engine.kb.augmentations
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidJob("augmentations", f"unknown augmentation(s) {unknown}; known: "
                                          f"{', '.join(sorted(known))}")
    missing = [n for n in names if n not in implemented]
    if missing:
        raise InvalidJob("augmentations", f"not implemented for training: {missing}; "
                                          f"implemented: {', '.join(sorted(implemented))}")
    colour = [n for n in names if n in COLOUR_ONLY and channels != 3]
    if colour:
        raise InvalidJob("augmentations", f"{colour} need RGB images; the dataset has "
                                          f"{channels} channel(s)")
    advised_against = {a.name: a.rule for a in avoid}
    clash = [f"{n} (rule {advised_against[n]})" for n in names if n in advised_against]
    if clash:
        raise InvalidJob("augmentations", "the rules advise against these for this dataset: "
                                       f"{', '.join(clash)}; see POST /v1/recommendations")


def check_eval_dataset(eval_dataset: DatasetFacts, dataset: DatasetFacts,
                       patch: int | None) -> None:
    """The evaluation set needs labels and images the new encoder can read."""
    what = f"eval_dataset_id {eval_dataset.id} ({eval_dataset.name})"
    if not eval_dataset.labelled:
        raise InvalidJob("eval_dataset_id", f"{what} is unlabelled; evaluating an encoder "
                                            "needs a labelled dataset")
    if (eval_dataset.spatial_dims, eval_dataset.channels) != (dataset.spatial_dims,
                                                              dataset.channels):
        raise InvalidJob("eval_dataset_id", f"{what} is {eval_dataset.spatial_dims}D with "
                                            f"{eval_dataset.channels} channel(s); the training "
                                            f"dataset is {dataset.spatial_dims}D with "
                                            f"{dataset.channels}")
    if patch and eval_dataset.image_size != dataset.image_size:
        raise InvalidJob("eval_dataset_id", f"{what} has {eval_dataset.image_size} images; "
                                            "this method's ViT reads only the training "
                                            f"dataset's {dataset.image_size}")


def plan_pretrain(spec: JobCreate, dataset: DatasetFacts,
                  eval_dataset: DatasetFacts | None = None) -> PretrainPlan:
    """Pretraining needs no labels; evaluation does: on `eval_dataset` when given, else on
    the training dataset, and skipped (saying why) when that is unlabelled."""
    # Objectives are torch modules: the planner imports them only for pretrain requests.
    from zoo.training.build import Recipe, plan_from_rules
    from zoo.training.pretext.registry import OBJECTIVES

    if not spec.method or spec.method not in OBJECTIVES:
        raise InvalidJob("method", f"pretrain needs an implemented method; one of "
                                f"{', '.join(sorted(OBJECTIVES))}")
    if not dataset.modality:
        raise InvalidJob("dataset_id", "the dataset has no modality; the rules need one to "
                                    "choose augmentations (give it when uploading)")
    if spec.name and not re.match(NAME_PATTERN, spec.name):
        raise InvalidJob("name", "encoder names are arch.tag in lower case, e.g. "
                              "resnet18-2d.my-ssl")
    defaults = pretrain_defaults()
    kind = OBJECTIVES[spec.method][1]
    preset = preset_for(defaults.encoder_for_any if kind == "any" else kind,
                        dataset.spatial_dims)
    patch = preset.patch_size
    if patch and any(s % patch for s in dataset.image_size):
        raise InvalidJob("method", f"{spec.method} uses a ViT with {patch}-pixel patches; image "
                                f"size {dataset.image_size} is not a multiple")
    evaluation, skipped = dict(defaults.evaluation), None
    if eval_dataset is not None:
        check_eval_dataset(eval_dataset, dataset, patch)
    elif not dataset.labelled:
        evaluation["protocols"] = []
        skipped = (f"dataset {dataset.name} is unlabelled and no eval_dataset_id was given, so "
                   "the encoder is not evaluated; give a labelled eval_dataset_id to score it")
    profile = {"task": "classification", "modality": dataset.modality,
               "dimensionality": f"{dataset.spatial_dims}d", "label_regime": "low"}
    recipe = Recipe(name=spec.name or "pending", method=spec.method, dataset=dataset.name,
                    architecture=preset.spec(), profile=profile)
    try:
        rules_plan = plan_from_rules(recipe, dataset.channels)
    except ValueError as err:
        raise InvalidJob("method", str(err)) from None
    source = {"rule": "zoo/training/pretrain_defaults.yaml", "source": defaults.source}
    used: dict[str, Any] = {}

    def pick(name: str, default: T) -> T:
        requested = getattr(spec, name)
        if requested != "auto":
            return requested
        used[name] = {"value": default, **source}
        return default

    return PretrainPlan(
        dataset_id=dataset.id, method=spec.method, architecture=preset.spec(),
        profile=profile, name=spec.name,
        name_template=f"{preset.name}.{spec.method.replace('_', '-')}-{dataset.slug}",
        epochs=pick("epochs", defaults.epochs), lr=pick("lr", defaults.lr),
        batch_size=pick("batch_size", defaults.batch_size[dataset.spatial_dims]),
        seed=spec.seed, device=spec.device, evaluation=evaluation,
        eval_dataset_id=eval_dataset.id if eval_dataset else None, evaluation_skipped=skipped,
        auto={"architecture": preset.name, "hyperparameters": rules_plan.hyperparameters,
              "augmentations": sorted(rules_plan.policy.ops),
              "recommended_rank": rules_plan.recommended_rank, "settings": used})
