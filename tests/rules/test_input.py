"""What a task profile may say, as vocabulary.yaml states it: the order of the default
layers, where each property applies, the task and modality names, unknown field names, and
a vocabulary file that is malformed."""

from __future__ import annotations

import copy
from itertools import product
from typing import Any

import pytest
from pydantic import ValidationError

from rules import ProfileConflict, TaskProfile
from rules.profile import Properties, property_defaults, resolve
from rules.vocabulary import Vocabulary, VocabularyError, load_vocabulary

VOCAB = load_vocabulary()


def combinations() -> list[tuple[str, str | None, str]]:
    """Every modality x anatomy (or none) x dimensionality the vocabulary accepts."""
    out = []
    for modality, entry in VOCAB.raw["modalities"].items():
        anatomies = entry.get("anatomies") or [None, *VOCAB.raw["anatomies"]]
        out += [(modality, a, d) for a, d in product(anatomies, entry["dims"])]
    return out


# -- default precedence -----------------------------------------------------------------


@pytest.mark.parametrize("modality", ["histopathology", "microscopy", "dermatology"])
def test_no_canonical_orientation_whatever_the_anatomy(modality: str) -> None:
    """Tissue sections, smears and skin photographs have no canonical orientation (review
    3.3): no anatomy default may make them orientation-sensitive."""
    seen = [(a, d) for m, a, d in combinations() if m == modality]
    assert len(seen) >= 1
    for anatomy, dims in seen:
        props, source = property_defaults(VOCAB, modality, anatomy, dims)
        assert props["orientation_sensitive"] is False, (modality, anatomy, dims)
        assert source["orientation_sensitive"] == f"default for modality {modality}"


@pytest.mark.parametrize(("modality", "anatomy"),
                         list(product(["ct", "mri", "xray"], ["brain", "chest", "cardiac"])))
def test_scanner_images_keep_their_orientation(modality: str, anatomy: str) -> None:
    for dims in VOCAB.modality(modality)["dims"]:
        props, _ = property_defaults(VOCAB, modality, anatomy, dims)
        assert props["orientation_sensitive"] is True, (modality, anatomy, dims)


def test_breast_histopathology_is_not_treated_as_orientation_sensitive() -> None:
    """The expert's case: anatomy breast used to override the modality, banning rotations
    and warning about laterality on tissue sections."""
    resolved, assumptions, _ = resolve(TaskProfile(
        task="classification", modality="histopathology", anatomy="breast",
        label_regime="low"))
    assert resolved.properties["orientation_sensitive"] is False
    assert {a.field: a.source for a in assumptions}["properties.orientation_sensitive"] \
        == "default for modality histopathology"
    # Mammography of the breast keeps its orientation.
    mammo, _, _ = resolve(TaskProfile(task="classification", modality="mammography",
                                      label_regime="low"))
    assert mammo.properties["orientation_sensitive"] is True


def test_the_code_follows_the_precedence_in_the_data() -> None:
    """With anatomy after modality (the old order), breast histopathology flips back; the
    pair and dims layers keep their places and still report themselves."""
    raw = copy.deepcopy(VOCAB.raw)
    raw["default_precedence"] = ["global", "modality", "anatomy", "pair", "dims"]
    old = Vocabulary(raw)
    props, source = property_defaults(old, "histopathology", "breast", "2d")
    assert props["orientation_sensitive"] is True
    assert source["orientation_sensitive"] == "default for anatomy breast"
    props, source = property_defaults(VOCAB, "ultrasound", "liver", "video")
    assert source["signal_organization"] == "default for ultrasound of the liver"
    assert (props["temporal"], source["temporal"]) == (True, "dimensionality video")
    raw["default_precedence"] = ["global", "anatomy", "modality", "pair"]
    with pytest.raises(VocabularyError, match="default_precedence"):
        Vocabulary(raw)


def test_every_combination_resolves_and_states_its_defaults() -> None:
    """Every accepted modality x anatomy x dims resolves without conflict (no default breaks
    `property_applies`), every property has a value, and every default is reported."""
    for modality, anatomy, dims in combinations():
        resolved, assumptions, _ = resolve(TaskProfile(
            task="classification", modality=modality, anatomy=anatomy, dimensionality=dims,
            label_regime="low"))
        assert set(resolved.properties) == set(Properties.model_fields)
        stated = {a.field for a in assumptions}
        for name, value in resolved.properties.items():
            if name != "paired_modalities" and value is not None:
                assert f"properties.{name}" in stated, (modality, anatomy, dims, name)


# -- where properties apply -------------------------------------------------------------


@pytest.mark.parametrize(("prop", "modality", "where"), [
    ("multi_sequence", "xray", "fmri, mri"),
    ("kspace", "ct", "fmri, mri"),
    ("temporal", "histopathology", "ct, endoscopy, fluorescein_angiography, fmri, microscopy, "
                                   "mri, pet, ultrasound"),
    ("temporal", "dermatology", None),
    ("color", "ct", None),
    ("whole_slide", "microscopy", "histopathology"),
    ("whole_slide", "ct", "histopathology"),
])
def test_a_property_outside_its_modalities_is_refused(prop: str, modality: str,
                                                      where: str | None) -> None:
    with pytest.raises(ProfileConflict) as info:
        resolve(TaskProfile(task="classification", modality=modality, label_regime="low",
                            properties={prop: True}))
    assert info.value.field == f"properties.{prop}"
    assert info.value.reason.startswith(f"{prop}=true does not apply to {modality}: ")
    applies = ", ".join(sorted(VOCAB.property_applies[prop][0]))
    assert info.value.reason.endswith(f"it applies to {applies}")
    if where:
        assert applies == where


@pytest.mark.parametrize(("prop", "modality", "value"), [
    ("kspace", "mri", True), ("kspace", "fmri", True), ("multi_sequence", "mri", True),
    ("whole_slide", "histopathology", True), ("temporal", "ct", True),
    ("color", "endoscopy", True), ("multi_site", "xray", True), ("longitudinal", "oct", True),
    # Saying that a property does not hold is never a contradiction.
    ("kspace", "ct", False), ("whole_slide", "ct", False), ("temporal", "fundus", False),
])
def test_a_property_within_its_modalities_is_accepted(prop: str, modality: str,
                                                      value: bool) -> None:
    resolved, _, _ = resolve(TaskProfile(task="classification", modality=modality,
                                         label_regime="low", properties={prop: value}))
    assert resolved.properties[prop] is value


def test_property_applies_names_boolean_properties() -> None:
    for prop in VOCAB.property_applies:
        assert Properties.model_fields[prop].annotation == bool | None, prop


def test_new_properties_default_to_false() -> None:
    resolved, assumptions, _ = resolve(TaskProfile(task="classification", modality="ct",
                                                   label_regime="low"))
    stated = {a.field: (a.value, a.source) for a in assumptions}
    for prop in ("multi_site", "longitudinal", "whole_slide"):
        assert resolved.properties[prop] is False
        assert stated[f"properties.{prop}"] == (False, "global default")
        assert len(Properties.model_fields[prop].description or "") > 30


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "task"), [
    ("survival prediction", "regression"), ("Brain-Age estimation", "regression"),
    ("cellularity", "regression"), ("perfusion_estimation", "regression"),
    ("visual acuity prediction", "regression"), ("body part regression", "regression"),
    ("biomarker measurement", "regression"), ("quantification", "regression"),
    ("landmark localization", "detection"), ("fovea localisation", "detection"),
    ("keypoint detection", "detection"),
])
def test_task_aliases(given: str, task: str) -> None:
    assert TaskProfile(task=given, modality="ct", label_regime="low").task == task


def test_prognosis_alone_is_not_guessed() -> None:
    """The review's COVID-19 prognosis is a classification, its survival prediction a
    regression: a bare 'prognosis' is refused with a suggestion, not mapped."""
    with pytest.raises(ValidationError) as info:
        TaskProfile(task="prognosis", modality="ct", label_regime="low")
    assert info.value.errors()[0]["type"] == "unknown_value"


def test_fluorescein_angiography() -> None:
    resolved, assumptions, _ = resolve(TaskProfile(
        task="segmentation", modality="FFA", label_regime="few_shot",
        properties={"paired_modalities": ["retinography"]}))
    assert (resolved.modality, resolved.anatomy, resolved.dimensionality) == (
        "fluorescein_angiography", "retina", "2d")
    assert resolved.properties["paired_modalities"] == ["fundus"]
    assert resolved.properties["orientation_sensitive"] is True
    assert resolved.properties["color"] is False
    assert {a.field for a in assumptions} >= {"anatomy", "dimensionality"}
    with pytest.raises(ProfileConflict, match="retina"):
        resolve(TaskProfile(task="classification", modality="fluorescein_angiography",
                            anatomy="brain", label_regime="low"))
    assert TaskProfile(task="segmentation", modality="diffusion MRI",
                       label_regime="low").modality == "mri"


@pytest.mark.parametrize(("where", "given", "suggestion"), [
    ("properties", "colour", "color"),
    ("properties", "paired", "paired_modalities"),
    ("properties", "signal", "signal_organization"),
    ("properties", "multicenter", "multi_site"),
    ("properties", "Whole-Slide", "whole_slide"),
    ("properties", "orientaton_sensitive", "orientation_sensitive"),
    ("properties", "zzz", None),
    (None, "dims", "dimensionality"),
    (None, "num_classes", "classes"),
])
def test_unknown_names_get_a_suggestion_and_the_allowed_list(
        where: str | None, given: str, suggestion: str | None) -> None:
    body: dict[str, Any] = {"task": "classification", "modality": "ct", "label_regime": "low"}
    (body.setdefault(where, {}) if where else body)[given] = True
    with pytest.raises(ValidationError) as info:
        TaskProfile.model_validate(body)
    (err,) = info.value.errors()
    model = Properties if where else TaskProfile
    assert err["loc"] == ((where, given) if where else (given,))
    assert err["type"] == "extra_forbidden"
    assert err["ctx"]["did_you_mean"] == suggestion
    assert err["ctx"]["allowed"] == list(model.model_fields)
    assert ("did you mean" in err["msg"]) == (suggestion is not None)
    assert f"Allowed: {', '.join(model.model_fields)}" in err["msg"]


def test_field_hints_point_to_real_fields() -> None:
    fields = {*TaskProfile.model_fields, *Properties.model_fields}
    assert set(VOCAB.field_hints.values()) <= fields
    assert not set(VOCAB.field_hints) & fields


# -- a malformed vocabulary stops loading -----------------------------------------------


def _broken(mutate) -> str:  # type: ignore[no-untyped-def]
    raw = copy.deepcopy(VOCAB.raw)
    mutate(raw)
    with pytest.raises(VocabularyError) as info:
        Vocabulary(raw)
    return str(info.value)


def test_malformed_label_regime_steps_are_refused() -> None:
    def unknown_fact(raw: dict) -> None:
        raw["label_regime"][1]["when"] = {"fact": "labelled", "op": "eq", "value": 1}

    def last_conditional(raw: dict) -> None:
        raw["label_regime"][-1]["when"] = {"fact": "labeled", "op": "gt", "value": 0}

    def middle_unconditional(raw: dict) -> None:
        del raw["label_regime"][2]["when"]

    def wrong_id(raw: dict) -> None:
        raw["label_regime"][0]["id"] = "regime.low.no_labels"

    def bad_template(raw: dict) -> None:
        raw["label_regime"][0]["explain"] = "{labelled} labels"

    assert "label_regime.regime.few_shot.per_class: " in _broken(unknown_fact)
    assert "only the last" in _broken(last_conditional)
    assert "only the last" in _broken(middle_unconditional)
    assert "id must be regime.none.<why>" in _broken(wrong_id)
    assert "'{labelled}' is not a count fact" in _broken(bad_template)


def test_other_malformed_entries_are_refused() -> None:
    def unknown_modality(raw: dict) -> None:
        raw["property_applies"]["kspace"]["modalities"].append("mrii")

    def alias_twice(raw: dict) -> None:
        raw["modalities"]["ct"]["aliases"].append("mr")

    assert "property_applies.kspace" in _broken(unknown_modality)
    assert "modalities.mri: 'mr' already names modality 'ct'" in _broken(alias_twice)
