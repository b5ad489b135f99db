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


# (labeled, unlabeled, classes, dims, task) -> (regime, the vocabulary.yaml step that gave it)
REGIME_CASES = [
    ((0, 1000, None, "2d", "classification"), ("none", "regime.none.no_labels")),
    ((0, None, 5, "3d", "segmentation"), ("none", "regime.none.no_labels")),
    ((20, 1000, 2, "2d", "classification"), ("few_shot", "regime.few_shot.per_class")),
    ((5, None, 50, "2d", "classification"), ("few_shot", "regime.few_shot.per_class")),
    ((30, 30, 3, "3d", "anomaly_detection"), ("few_shot", "regime.few_shot.per_class")),
    ((20, 1000, None, "2d", "classification"), ("few_shot", "regime.few_shot.few_images")),
    ((20, None, None, "video", "detection"), ("few_shot", "regime.few_shot.few_images")),
    ((10, 500, None, "3d", "segmentation"), ("few_shot", "regime.few_shot.few_volumes")),
    ((11, 500, None, "3d", "segmentation"), ("low", "regime.low.few_volumes")),
    ((49, None, None, "3d", "segmentation"), ("low", "regime.low.few_volumes")),
    # The issue: a few dozen labelled images with no unlabelled count (or mostly labelled)
    # were 'full'; they are scarce whatever the pool.
    ((40, None, None, "2d", "classification"), ("low", "regime.low.few_images")),
    ((40, 10, 2, "2d", "classification"), ("low", "regime.low.few_images")),
    ((199, None, 2, "2d", "classification"), ("low", "regime.low.few_images")),
    ((30, 1000, 2, "2d", "classification"), ("low", "regime.low.few_images")),
    # Per-class counts say nothing for dense labels: 100 volumes x 14 organs is not few-shot.
    ((100, None, 14, "3d", "segmentation"), ("moderate", "regime.moderate.mid_sized")),
    ((200, None, 2, "2d", "classification"), ("moderate", "regime.moderate.mid_sized")),
    ((50, None, None, "3d", "segmentation"), ("moderate", "regime.moderate.mid_sized")),
    ((250, 10_000, 2, "2d", "classification"), ("low", "regime.low.small_fraction")),
    ((60, 600, None, "3d", "segmentation"), ("low", "regime.low.small_fraction")),
    ((300, 900, 2, "2d", "classification"), ("moderate", "regime.moderate.partial_fraction")),
    ((100, 200, None, "3d", "segmentation"), ("moderate", "regime.moderate.partial_fraction")),
    ((2999, None, 2, "2d", "classification"), ("moderate", "regime.moderate.mid_sized")),
    ((3000, None, 2, "2d", "classification"), ("full", "regime.full.many_images")),
    ((3000, 2999, 2, "2d", "classification"), ("full", "regime.full.many_images")),
    ((3000, 3001, 2, "2d", "classification"),
     ("moderate", "regime.moderate.many_images_large_pool")),
    # Many labels beside a huge archive: not scarce (moderate), although the fraction is tiny.
    ((50_000, 1_000_000, None, "2d", "classification"),
     ("moderate", "regime.moderate.many_images_large_pool")),
    ((3000, None, 100, "2d", "classification"), ("moderate", "regime.moderate.mid_sized")),
    ((10_000, None, 100, "2d", "classification"), ("full", "regime.full.many_images")),
    ((299, None, None, "3d", "segmentation"), ("moderate", "regime.moderate.mid_sized")),
    ((300, None, None, "3d", "segmentation"), ("full", "regime.full.many_volumes")),
    ((300, 100, 14, "3d", "segmentation"), ("full", "regime.full.many_volumes")),
    ((500, 5000, None, "3d", "segmentation"),
     ("moderate", "regime.moderate.many_volumes_large_pool")),
]


@pytest.mark.parametrize(("counts", "expected"), REGIME_CASES)
def test_label_regime_steps(counts: tuple, expected: tuple[str, str]) -> None:
    labeled, unlabeled, classes, dims, task = counts
    got = derive_label_regime(labeled, unlabeled, classes, load_vocabulary(), dims, task)
    assert (got.regime, got.rule) == expected, got.why


def test_every_regime_step_is_exercised() -> None:
    """The table above reaches every step, so a step that becomes unreachable, or one added
    without a case here, fails."""
    steps = {s.id for s in load_vocabulary().regime_steps}
    assert steps == {rule for _, (_, rule) in REGIME_CASES}
    assert all(s.id.startswith(f"regime.{s.regime}.") for s in load_vocabulary().regime_steps)


def test_regime_rule_and_source_in_the_resolved_profile() -> None:
    resolved, _, _ = resolve(TaskProfile(task="classification", modality="xray", labeled=40))
    assert resolved.label_regime == "low"
    assert resolved.label_regime_rule == "regime.low.few_images"
    assert resolved.label_regime_source == ("derived: 40 labelled images, fewer than 200 "
                                            "whatever the unlabelled pool")
    # A CT volume count is a count of volumes, a 2D CT slice count one of images.
    ct3d, _, _ = resolve(TaskProfile(task="segmentation", modality="ct", labeled=40))
    ct2d, _, _ = resolve(TaskProfile(task="segmentation", modality="ct", labeled=40,
                                     dimensionality="2d"))
    assert (ct3d.label_regime_rule, ct2d.label_regime_rule) == (
        "regime.low.few_volumes", "regime.low.few_images")
    given, _, _ = resolve(TaskProfile(task="classification", modality="xray",
                                      label_regime="moderate"))
    assert (given.label_regime_rule, given.label_regime_source) == ("given", "given")


def test_a_few_dozen_labels_are_not_told_to_expect_a_small_gain() -> None:
    rec = default_engine().recommend(TaskProfile(task="classification", modality="xray",
                                                 labeled=40, classes=2))
    assert rec.profile.label_regime == "low"
    assert "small_gain_full_labels" not in {w.code for w in rec.warnings}


@pytest.mark.parametrize(("labeled", "classes", "task", "warned"), [
    (5, 50, "classification", True),
    (49, 50, "anomaly_detection", True),
    (50, 50, "classification", False),
    (0, 50, "classification", False),     # no labels at all: the regime says it
    (5, 50, "segmentation", False),       # every mask carries every class
    (5, None, "classification", False),
])
def test_fewer_labels_than_classes_warns(labeled: int, classes: int | None, task: str,
                                         warned: bool) -> None:
    _, _, warnings = resolve(TaskProfile(task=task, modality="ct", dimensionality="2d",
                                         labeled=labeled, unlabeled=1000, classes=classes))
    found = [w for w in warnings if w.code == "input_fewer_labels_than_classes"]
    assert bool(found) == warned
    if warned:
        assert f"{labeled} labelled images for {classes} classes" in found[0].message


def test_contradictory_regime_and_counts() -> None:
    with pytest.raises(ProfileConflict, match="contradicts the counts") as info:
        resolve(TaskProfile(task="classification", modality="ct", label_regime="full",
                            labeled=10, unlabeled=10000))
    assert info.value.field == "label_regime"
    assert "'few_shot'" in info.value.reason and "regime.few_shot.few_volumes" in info.value.reason
    # A few dozen labelled images said to be `full` now contradict the counts as well.
    with pytest.raises(ProfileConflict, match="contradicts the counts"):
        resolve(TaskProfile(task="classification", modality="xray", label_regime="full",
                            labeled=40))


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
    with pytest.raises(ProfileConflict, match="k-space") as info:
        resolve(TaskProfile(task="reconstruction", modality="ct", label_regime="low",
                            properties={"kspace": True}))
    assert info.value.field == "properties.kspace"
    assert info.value.reason.startswith("kspace=true does not apply to ct: ")
    assert info.value.reason.endswith("it applies to fmri, mri")


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
