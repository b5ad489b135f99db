"""The job planner on real seed cards and the real rules engine: every "auto" value is
resolved from rules data and says where it came from; impossible requests are refused
with the field to fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from rules import default_engine
from service.jobs.plan import (
    DatasetFacts,
    FinetunePlan,
    InvalidJob,
    JobCreate,
    PretrainPlan,
    check_limits,
    plan_finetune,
    plan_pretrain,
)
from zoo.catalog import RevisionRow

SEED = Path(__file__).resolve().parents[3] / "zoo" / "seed"


def revision(name: str) -> RevisionRow:
    return RevisionRow(number=1, commit="c" * 40,
                       card=json.loads((SEED / name / "card.json").read_text()))


def breast(**changes: Any) -> DatasetFacts:
    facts = {"id": 1, "name": "breastmnist", "modality": "ultrasound", "spatial_dims": 2,
             "channels": 1, "image_size": [28, 28], "num_classes": 2, "train_images": 546}
    return DatasetFacts(**{**facts, **changes})


def finetune(request: dict[str, Any], dataset: DatasetFacts | None = None,
             encoder: str = "resnet18-2d.simclr-pneumoniamnist") -> FinetunePlan:
    spec = JobCreate(type="finetune", dataset_id=1, encoder=f"taskalign/{encoder}", **request)
    return plan_finetune(spec, dataset or breast(), revision(encoder), default_engine())


def test_auto_values_come_from_the_rules_with_their_source() -> None:
    plan = finetune({"label_fraction": 1.0})
    assert (plan.mode, plan.epochs, plan.lr, plan.batch_size) == ("full", 20, 1e-3, 128)
    settings = plan.auto["settings"]
    assert set(settings) == {"mode", "epochs", "lr", "encoder_lr_multiplier", "batch_size",
                             "augmentations"}
    assert settings["lr"]["rule"] == "ft.default"
    assert settings["lr"]["evidence"][0]["id"] == "ext:yang2023medmnist"
    assert plan.auto["label_regime"] == "moderate"  # 546 labelled images: not a full-size set
    assert plan.auto["regime_rule"].startswith("regime.moderate")
    assert plan.auto["advice_rule"] == "advice.moderate"
    # the plan names the repository and the exact revision it resolved
    assert plan.encoder == "taskalign/resnet18-2d.simclr-pneumoniamnist"
    assert (plan.encoder_revision, plan.encoder_commit) == ("1", "c" * 40)


def test_scarce_labels_plan_a_linear_probe_and_given_values_win() -> None:
    plan = finetune({"label_fraction": 0.01, "epochs": 3})  # 5 labels: few-shot
    assert plan.mode == "linear_probe"
    assert plan.auto["settings"]["mode"]["rule"] == "ft.scarce.frozen_encoder"
    assert plan.epochs == 3 and "epochs" not in plan.auto["settings"]


def test_augmentations_the_rules_advise_against_are_refused() -> None:
    with pytest.raises(InvalidJob) as info:
        finetune({"augmentations": ["gaussian_noise", "rotation_90"]})
    assert info.value.field == "augmentations"
    assert "rotation_90 (rule tr.orientation.no_rotation_invariance)" in info.value.message
    with pytest.raises(InvalidJob, match="unknown augmentation"):
        finetune({"augmentations": ["spin"]})
    assert finetune({"augmentations": ["gaussian_noise"]}).augmentations == ["gaussian_noise"]


@pytest.mark.parametrize(("dataset", "encoder", "message"), [
    (breast(spatial_dims=3, image_size=[28, 28, 28]), "resnet18-2d.simclr-pneumoniamnist",
     "is a 2D encoder"),
    (breast(channels=3), "resnet18-2d.simclr-pneumoniamnist", "expects 1 channel"),
    (breast(image_size=[64, 64]), "vit-2d.mae-pneumoniamnist", "is a ViT for [28, 28]"),
])
def test_incompatible_encoder_is_refused(dataset: DatasetFacts, encoder: str,
                                         message: str) -> None:
    with pytest.raises(InvalidJob) as info:
        finetune({}, dataset, encoder)
    assert info.value.field == "encoder" and message in info.value.message


def test_pretrain_plan_uses_named_presets_and_rules() -> None:
    plan = plan_pretrain(JobCreate(type="pretrain", dataset_id=1, method="mae"), breast())
    assert isinstance(plan, PretrainPlan)
    assert plan.auto["architecture"] == "vit-2d"
    assert plan.architecture["args"]["patch_size"] == 4
    assert plan.name_template == "vit-2d.mae-breastmnist"
    assert plan.batch_size == 256 and plan.auto["settings"]["epochs"]["value"] == 10
    assert "rotation_90" not in plan.auto["augmentations"]
    with pytest.raises(InvalidJob, match="supports 3d"):
        plan_pretrain(JobCreate(type="pretrain", dataset_id=1, method="rubiks_cube"), breast())


@pytest.mark.parametrize(("request_", "field", "message"), [
    ({"label_fraction": 0.01, "augmentations": ["gaussian_noise"]}, "augmentations",
     "linear_probe was chosen for these labels"),
    ({"mode": "linear_probe", "encoder_lr_multiplier": 0.5}, "encoder_lr_multiplier",
     "only apply to mode full"),
    ({"augmentations": ["elastic_deformation"]}, "augmentations", "not implemented"),
    ({"augmentations": ["color_jitter"]}, "augmentations", "need RGB images"),
])
def test_settings_a_job_would_ignore_are_refused(request_: dict[str, Any], field: str,
                                                 message: str) -> None:
    with pytest.raises(InvalidJob) as info:
        finetune(request_)
    assert info.value.field == field and message in info.value.message


def test_a_zero_encoder_learning_rate_is_refused() -> None:
    with pytest.raises(InvalidJob, match="linear_probe keeps the encoder frozen"):
        check_limits(JobCreate(type="finetune", dataset_id=1, encoder_lr_multiplier=0))
    check_limits(JobCreate(type="pretrain", dataset_id=1, epochs=500, lr=1e-3))
    with pytest.raises(InvalidJob, match="epochs must be 'auto' or between 1 and 500"):
        check_limits(JobCreate(type="pretrain", dataset_id=1, epochs=10**9))


def test_plan_job_records_namespace_privacy_and_the_exact_revision(database_url: str,
                                                                   tmp_path: Path) -> None:
    """Results go to the caller's namespace (an admin's to taskalign), private unless the
    request says otherwise; the plan pins the commit it resolved; and an encoder the caller
    may not see is as unknown as one that does not exist."""
    from datetime import UTC, datetime

    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from service.jobs.plan import plan_job
    from service.migrate import upgrade
    from service.users import User
    from zoo.catalog import DatasetRow
    from zoo.registry import Registry, prepare
    from zoo.storage import BlobStore

    engine = create_engine(database_url)
    upgrade(engine)
    registry = Registry(sessionmaker(engine, expire_on_commit=False), BlobStore(tmp_path))
    name = "resnet18-2d.simclr-pneumoniamnist"
    raw = json.loads((SEED / name / "card.json").read_text())
    blob = (SEED / name / "model.safetensors").read_bytes()
    first = registry.register(prepare(raw, blob), owner="taskalign", private=False)
    hidden = registry.register(prepare(raw, blob), owner="bob", private=True)
    facts = breast()
    with registry.sessions.begin() as session:
        session.add(DatasetRow(name=facts.name, owner="alice", kind="path", path="/x", size=1,
                               modality=facts.modality, spatial_dims=2, channels=1,
                               image_size=[28, 28], num_classes=2,
                               summary={"splits": {"train": {"images": 546}}},
                               created_at=datetime.now(UTC)))
        session.flush()
        dataset_id = session.scalars(select(DatasetRow.id)).one()
    second = registry.register(prepare({**raw, "description": "revision two"}, blob),
                               owner="taskalign")
    alice, admin = User("alice", admin=False), User("admin", admin=True)

    def plan(user: User, **request: Any) -> FinetunePlan:
        spec = JobCreate(type="finetune", dataset_id=dataset_id, epochs=1, **request)
        result = plan_job(spec, user, registry, default_engine())
        assert isinstance(result, FinetunePlan)
        return result

    latest = plan(alice, encoder=first.repo_id)
    assert (latest.namespace, latest.private) == ("alice", True)
    assert (latest.encoder, latest.encoder_revision, latest.encoder_commit) == (
        first.repo_id, "2", second.commit)
    pinned = plan(alice, encoder=first.repo_id, encoder_revision="1", private=False)
    assert (pinned.encoder_revision, pinned.encoder_commit) == ("1", first.commit)
    assert pinned.private is False
    by_commit = plan(alice, encoder=first.repo_id, encoder_revision=first.commit)
    assert by_commit.encoder_revision == "1" and by_commit.encoder_commit == first.commit
    assert plan(admin, encoder=first.repo_id).namespace == "taskalign"
    assert plan(admin, encoder=hidden.repo_id).encoder_commit == hidden.commit
    messages = []
    for repo in (hidden.repo_id, "bob/resnet18-2d.simclr-nothing", name):
        with pytest.raises(InvalidJob) as info:
            plan(alice, encoder=repo)
        assert info.value.field == "encoder"
        messages.append(info.value.message.replace(repo, "<repo>"))
    assert messages[0] == messages[1] == messages[2]  # bob's private one: as unknown
    pretrain = plan_job(JobCreate(type="pretrain", dataset_id=dataset_id, method="simclr",
                                  private=False), alice, registry, default_engine())
    assert (pretrain.namespace, pretrain.private) == ("alice", False)
    engine.dispose()


BREAST_CLASSES = {0: 147, 1: 399}  # BreastMNIST's train split per class


def test_too_few_labels_per_class_are_refused_with_the_fraction_that_works() -> None:
    with pytest.raises(InvalidJob) as info:
        finetune({"label_fraction": 0.0001}, breast(train_per_class=BREAST_CLASSES))
    assert info.value.field == "label_fraction"
    message = info.value.message
    assert "leaves 1 labelled training image(s) per class at the fewest (class 0: 1 of its " \
           "147)" in message
    assert "at least 2 per class" in message
    assert "the smallest label_fraction that gives that is 0.0103" in message
    # That fraction works, is marked as few labels, and one just below it does not.
    plan = finetune({"label_fraction": 0.0103}, breast(train_per_class=BREAST_CLASSES))
    assert (plan.labelled_per_class_min, plan.few_labels) == (2, True)
    with pytest.raises(InvalidJob, match="0.0103"):
        finetune({"label_fraction": 0.0102}, breast(train_per_class=BREAST_CLASSES))


def test_label_counts_are_the_subset_training_draws() -> None:
    """The stored count is what zoo.training.evaluate.label_subset picks on real labels."""
    import numpy as np
    import torch

    from tests.utils import DATA_DIR
    from zoo.training.evaluate import label_subset

    path = DATA_DIR / "medmnist" / "breastmnist.npz"
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    with np.load(path) as data:
        labels = torch.from_numpy(data["train_labels"][:, 0].astype(np.int64))
    for fraction, few in ((0.02, True), (0.1, False), (1.0, False)):
        plan = finetune({"label_fraction": fraction, "seed": 3},
                        breast(train_per_class=BREAST_CLASSES))
        picked = labels[label_subset(labels, fraction, 3)]
        assert plan.labelled_per_class_min == int(torch.bincount(picked).min())
        assert plan.few_labels is few


def test_a_class_too_small_for_any_fraction_is_named() -> None:
    with pytest.raises(InvalidJob, match="class 1 has only 1 training image"):
        finetune({"label_fraction": 0.5}, breast(train_per_class={0: 545, 1: 1}))


def test_unlabelled_datasets_cannot_be_fine_tuned() -> None:
    with pytest.raises(InvalidJob) as info:
        finetune({}, breast(labelled=False, num_classes=0))
    assert info.value.field == "dataset_id"
    assert "is unlabelled (images only) and fine-tuning needs labels" in info.value.message


def test_pretrain_evaluation_set() -> None:
    """Unlabelled training data: evaluated on the given labelled set, or not at all (and
    the plan says why); the evaluation set must be labelled and readable by the encoder."""
    spec = JobCreate(type="pretrain", dataset_id=1, method="simclr", eval_dataset_id=2)
    unlabelled = breast(labelled=False, num_classes=0)
    labelled = breast(id=2, name="breast-eval", train_per_class=BREAST_CLASSES)
    plan = plan_pretrain(spec, unlabelled, labelled)
    assert plan.eval_dataset_id == 2 and plan.evaluation_skipped is None
    assert plan.evaluation["protocols"] == ["linear_probe"]
    skipped = plan_pretrain(spec.model_copy(update={"eval_dataset_id": None}), unlabelled)
    assert skipped.eval_dataset_id is None and skipped.evaluation["protocols"] == []
    assert "is unlabelled and no eval_dataset_id was given" in skipped.evaluation_skipped
    own = plan_pretrain(spec.model_copy(update={"eval_dataset_id": None}), labelled)
    assert own.evaluation_skipped is None and own.evaluation["protocols"] == ["linear_probe"]
    for other, message in ((breast(id=2, labelled=False), "is unlabelled; evaluating"),
                           (breast(id=2, channels=3), "with 3 channel(s)")):
        with pytest.raises(InvalidJob) as info:
            plan_pretrain(spec, unlabelled, other)
        assert info.value.field == "eval_dataset_id" and message in info.value.message
    with pytest.raises(InvalidJob, match="ViT reads only"):
        plan_pretrain(spec.model_copy(update={"method": "mae"}), unlabelled,
                      breast(id=2, image_size=[64, 64]))
