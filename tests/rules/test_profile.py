from __future__ import annotations

import pytest
from pydantic import ValidationError

from rules import ProfileConflict, TaskProfile, default_engine
from rules.profile import derive_label_regime, resolve
from rules.vocabulary import load_vocabulary


@pytest.mark.parametrize(("given", "canonical"), [
    ("x-ray", "xray"), ("CXR", "xray"), ("X Ray", "xray"), ("wsi", "histopathology"),
    ("Dermoscopy", "dermatology"), ("MR", "mri"), ("panoramic", "dental_radiograph"),
])
def test_modality_aliases(given: str, canonical: str) -> None:
    assert TaskProfile(task="classification", modality=given, label_regime="low").modality \
        == canonical


def test_unknown_value_lists_allowed_and_closest() -> None:
    with pytest.raises(ValidationError) as info:
        TaskProfile(task="segmentaton", modality="ct", label_regime="low")
    err = info.value.errors()[0]
    assert err["loc"] == ("task",)
    assert err["ctx"]["did_you_mean"] == "segmentation"
    assert "classification" in err["ctx"]["allowed"]


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(ValidationError):
        TaskProfile(task="classification", modality="ct", label_regime="low", colour=True)


@pytest.mark.parametrize(("labeled", "unlabeled", "classes", "regime"), [
    (0, 1000, None, "none"),
    (20, 1000, 2, "few_shot"),       # 10 per class
    (30, 1000, 2, "low"),            # 15 per class, fraction 0.029
    (20, 1000, None, "few_shot"),    # <= 20 without classes
    (99, 901, 2, "low"),             # fraction 0.099
    (100, 900, 2, "moderate"),       # fraction 0.10
    (499, 501, 2, "moderate"),
    (500, 500, 2, "full"),
    (5000, None, 2, "full"),         # no unlabeled pool
])
def test_label_regime_thresholds(labeled: int, unlabeled: int | None, classes: int | None,
                                 regime: str) -> None:
    assert derive_label_regime(labeled, unlabeled, classes, load_vocabulary())[0] == regime


def test_contradictory_regime_and_counts() -> None:
    with pytest.raises(ProfileConflict, match="contradicts the counts"):
        resolve(TaskProfile(task="classification", modality="ct", label_regime="full",
                            labeled=10, unlabeled=10000))


def test_missing_label_information() -> None:
    with pytest.raises(ProfileConflict, match="label_regime"):
        resolve(TaskProfile(task="classification", modality="ct"))


def test_dimensionality_contradiction() -> None:
    with pytest.raises(ProfileConflict, match="dermatology images are not 3d"):
        resolve(TaskProfile(task="classification", modality="dermatology",
                            dimensionality="3d", label_regime="low"))


def test_anatomy_contradiction() -> None:
    with pytest.raises(ProfileConflict, match="retina"):
        resolve(TaskProfile(task="classification", modality="fundus", anatomy="knee",
                            label_regime="low"))


def test_kspace_only_for_mri() -> None:
    with pytest.raises(ProfileConflict, match="k-space"):
        resolve(TaskProfile(task="reconstruction", modality="ct", label_regime="low",
                            properties={"kspace": True}))


def test_defaults_are_stated() -> None:
    resolved, assumptions, _ = resolve(TaskProfile(task="segmentation", modality="mri",
                                                   anatomy="cardiac", label_regime="low"))
    assert resolved.dimensionality == "3d"
    assert resolved.properties["orientation_sensitive"] is True
    stated = {a.field: a.source for a in assumptions}
    assert stated["dimensionality"] == "default for modality mri"
    assert stated["properties.noise"] == "default for modality mri"


def test_user_value_wins_over_default_with_warning() -> None:
    rec = default_engine().recommend(TaskProfile(
        task="classification", modality="xray", label_regime="low",
        properties={"orientation_sensitive": False}))
    assert rec.profile.properties["orientation_sensitive"] is False
    assert "input_overrides_default" in {w.code for w in rec.warnings}
    assert "rotation_invariance_orientation_sensitive" not in {w.code for w in rec.warnings}


def test_paired_modality_same_as_primary_is_dropped() -> None:
    rec = default_engine().recommend(TaskProfile(
        task="classification", modality="fundus", label_regime="low",
        properties={"paired_modalities": ["fundus"]}))
    assert rec.profile.properties["paired_modalities"] == []
    assert "input_paired_same_modality" in {w.code for w in rec.warnings}
