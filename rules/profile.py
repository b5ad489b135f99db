"""Task profiles: what the user tells us, validated and normalised, and the facts derived
from it (dimensionality, label regime, property defaults), each derivation recorded."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .vocabulary import UnknownValueError, Vocabulary, count_facts, load_vocabulary, suggest


def _normalise(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, str):
        raise PydanticCustomError("string_type", "{kind} must be a string", {"kind": kind})
    try:
        return load_vocabulary().normalise(kind, value)
    except UnknownValueError as err:
        raise PydanticCustomError(
            "unknown_value",
            str(err),
            {"allowed": err.allowed, "did_you_mean": err.suggestion},
        ) from None


def _refuse_unknown_fields(model: type[BaseModel], what: str, data: Any) -> Any:
    """Refuse names the model lacks, each with the closest allowed name and the list of
    allowed ones (the 422 carries them as `did_you_mean` and `allowed`)."""
    if not isinstance(data, dict):
        return data
    unknown = [k for k in data if k not in model.model_fields]
    if not unknown:
        return data
    allowed = list(model.model_fields)
    hints = load_vocabulary().field_hints
    errors = []
    for key in unknown:
        close = suggest(str(key), allowed, hints)
        hint = f"; did you mean '{close}'?" if close else "."
        errors.append(InitErrorDetails(
            type=PydanticCustomError(
                "extra_forbidden", "unknown {what} '{name}'{hint} Allowed: {listed}",
                {"what": what, "name": str(key), "hint": hint, "listed": ", ".join(allowed),
                 "allowed": allowed, "did_you_mean": close}),
            loc=(str(key),), input=data[key]))
    raise ValidationError.from_exception_data(model.__name__, errors)


# Properties whose values come from a vocabulary list (the rest are booleans or numbers);
# rule conditions on them are checked against that list when the knowledge loads.
PROPERTY_VOCABULARY = {"lesion_scale": "lesion_scale", "signal_organization": "signal_organization",
                       "noise": "noise", "paired_modalities": "modality"}


class Properties(BaseModel):
    """Data properties; anything left out is filled from modality and anatomy defaults."""

    model_config = ConfigDict(extra="forbid")

    orientation_sensitive: bool | None = Field(
        None, description="Layout/laterality carries meaning (cardiac MRI, chest X-ray)."
    )
    lesion_scale: str | None = Field(None, description="small_focal, large or diffuse.")
    signal_organization: str | None = Field(
        None, description="Where the diagnostic signal lives: localized, global or mixed."
    )
    patient_ids: bool | None = Field(None, description="Several images per patient, with ids.")
    paired_modalities: list[str] | None = Field(
        None, description="Other modalities acquired for the same patients.", max_length=8
    )
    multi_sequence: bool | None = Field(None, description="Several MR sequences per study.")
    temporal: bool | None = Field(None, description="Frames over time (video, cine, fMRI).")
    color: bool | None = Field(None, description="RGB images.")
    noise: str | None = Field(
        None,
        description="Dominant noise: low, gaussian, rician, speckle, poisson, stain_variation.",
    )
    kspace: bool | None = Field(None, description="Raw MRI k-space is available.")
    atlas: bool | None = Field(None, description="An anatomical atlas can be registered.")
    multi_site: bool | None = Field(
        None, description="Images come from several hospitals or scanners, so site and "
        "protocol differ within the data (and between it and where the model will run).")
    longitudinal: bool | None = Field(
        None, description="Repeat scans of the same patients over time (follow-up studies).")
    whole_slide: bool | None = Field(
        None, description="Gigapixel whole-slide images that must be tiled into patches and "
        "aggregated back to slide level (histopathology only).")
    gpu_memory_gb: float | None = Field(None, gt=0, le=4096, description="GPU memory per device.")

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        return _refuse_unknown_fields(cls, "property", data)

    @field_validator("lesion_scale", mode="before")
    @classmethod
    def _lesion(cls, v: Any) -> Any:
        return _normalise("lesion_scale", v)

    @field_validator("signal_organization", mode="before")
    @classmethod
    def _signal(cls, v: Any) -> Any:
        return _normalise("signal_organization", v)

    @field_validator("noise", mode="before")
    @classmethod
    def _noise(cls, v: Any) -> Any:
        return _normalise("noise", v)

    @field_validator("paired_modalities", mode="before")
    @classmethod
    def _paired(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, list):
            raise PydanticCustomError("list_type", "paired_modalities must be a list", {})
        return sorted({_normalise("modality", m) for m in v})


class TaskProfile(BaseModel):
    """A recommendation request. Give `label_regime`, or counts to derive it from."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"task": "segmentation", "modality": "mri", "anatomy": "cardiac",
                 "labeled": 20, "unlabeled": 3000},
                {"task": "classification", "modality": "cxr", "label_regime": "low"},
            ]
        },
    )

    task: str = Field(description="classification, segmentation, detection, anomaly_detection, "
                      "reconstruction or regression (aliases accepted).")
    modality: str = Field(description="Imaging modality, e.g. ct, mri, xray, histopathology.")
    anatomy: str | None = Field(None, description="Body region, e.g. brain, cardiac, chest.")
    dimensionality: str | None = Field(None, description="2d, 3d or video; default by modality.")
    label_regime: str | None = Field(None, description="none, few_shot, low, moderate, full.")
    labeled: int | None = Field(None, ge=0, le=10**9, description="Number of labelled images "
                                "(volumes when the data is 3d).")
    unlabeled: int | None = Field(None, ge=0, le=10**10, description="Number of unlabelled "
                                  "images (volumes when the data is 3d).")
    classes: int | None = Field(None, ge=1, le=100_000, description="Number of classes.")
    properties: Properties = Field(default_factory=Properties)
    top_k: int = Field(10, ge=1, le=100, description="How many ranked methods to return.")

    @model_validator(mode="before")
    @classmethod
    def _known_names(cls, data: Any) -> Any:
        return _refuse_unknown_fields(cls, "field", data)

    @field_validator("task", mode="before")
    @classmethod
    def _task(cls, v: Any) -> Any:
        return _normalise("task", v)

    @field_validator("modality", mode="before")
    @classmethod
    def _modality(cls, v: Any) -> Any:
        return _normalise("modality", v)

    @field_validator("anatomy", mode="before")
    @classmethod
    def _anatomy(cls, v: Any) -> Any:
        return _normalise("anatomy", v)

    @field_validator("dimensionality", mode="before")
    @classmethod
    def _dims(cls, v: Any) -> Any:
        return _normalise("dimensionality", v)

    @field_validator("label_regime", mode="before")
    @classmethod
    def _regime(cls, v: Any) -> Any:
        return _normalise("label_regime", v)


class ProfileConflict(ValueError):
    """The profile is well-formed but contradicts itself or the modality."""

    def __init__(self, field: str, reason: str):
        self.field, self.reason = field, reason
        super().__init__(f"{field}: {reason}")


class Assumption(BaseModel):
    field: str
    value: Any
    source: str


class InputWarning(BaseModel):
    code: str
    message: str


class ResolvedProfile(BaseModel):
    """Every fact the rules may test, after defaults and derivations."""

    task: str
    table3_column: str
    modality: str
    anatomy: str | None
    dimensionality: str
    label_regime: str
    label_regime_source: str
    label_regime_rule: str  # the vocabulary.yaml label_regime step, or "given"
    labeled: int | None
    unlabeled: int | None
    classes: int | None
    properties: dict[str, Any]

    def facts(self) -> dict[str, Any]:
        return facts_of(self.model_dump())


def facts_of(resolved: dict[str, Any]) -> dict[str, Any]:
    """The flat fact table rules test, from a resolved profile in dict form."""
    facts = {
        "task": resolved["task"],
        "table3": resolved["table3_column"],
        "modality": resolved["modality"],
        "anatomy": resolved["anatomy"],
        "dims": resolved["dimensionality"],
        "label_regime": resolved["label_regime"],
        "labeled": resolved["labeled"],
        "unlabeled": resolved["unlabeled"],
        "classes": resolved["classes"],
    }
    props = resolved["properties"]
    facts.update(props)
    # Facts are hashable: the engine memoises which rules fire by their values.
    facts["paired_modalities"] = tuple(props.get("paired_modalities") or ())
    facts["paired"] = bool(facts["paired_modalities"])
    return facts


class DerivedRegime(NamedTuple):
    regime: str
    rule: str  # the step's id in vocabulary.yaml's label_regime
    why: str


def derive_label_regime(labeled: int, unlabeled: int | None, classes: int | None,
                        vocab: Vocabulary, dims: str = "2d", task: str = "classification"
                        ) -> DerivedRegime:
    """The first of vocabulary.yaml's label_regime steps that holds for the counts."""
    facts = count_facts(labeled, unlabeled, classes, dims, task)
    for step in vocab.regime_steps:
        if step.when is None or step.when(facts):
            return DerivedRegime(step.regime, step.id, step.explain.format_map(facts))
    raise AssertionError("the last label_regime step is unconditional")  # checked at load


def resolve(profile: TaskProfile, vocab: Vocabulary | None = None) -> tuple[
    ResolvedProfile, list[Assumption], list[InputWarning]
]:
    """Apply defaults and derivations; raises ProfileConflict on a contradiction."""
    resolved, assumptions, warnings = resolve_dicts(profile, vocab or load_vocabulary())
    return (ResolvedProfile(**resolved), [Assumption(**a) for a in assumptions],
            [InputWarning(**w) for w in warnings])


def resolve_dicts(profile: TaskProfile, vocab: Vocabulary) -> tuple[
    dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]
]:
    """resolve() as plain dicts in the models' field order: the engine serialises them
    directly, which is several times cheaper than building and dumping the models."""
    modality = vocab.modality(profile.modality)
    assumptions: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []

    dims = profile.dimensionality
    if dims is None and profile.properties.temporal and modality["default_dims"] == "2d" \
            and "video" in modality["dims"]:
        # Frames over time of a 2d modality are video: the temporal objectives need them so.
        dims = "video"
        assumptions.append({"field": "dimensionality", "value": dims,
                            "source": "properties.temporal: 2d frames over time are video"})
    if dims is None:
        dims = modality["default_dims"]
        assumptions.append({"field": "dimensionality", "value": dims,
                            "source": f"default for modality {profile.modality}"})
    elif dims not in modality["dims"]:
        raise ProfileConflict(
            "dimensionality",
            f"{profile.modality} images are not {dims}; allowed for {profile.modality}: "
            f"{', '.join(modality['dims'])}",
        )

    fixed_anatomies = modality.get("anatomies")
    anatomy = profile.anatomy
    if anatomy and fixed_anatomies and anatomy not in fixed_anatomies:
        raise ProfileConflict(
            "anatomy",
            f"{profile.modality} images show {', '.join(fixed_anatomies)}, not {anatomy}",
        )
    if anatomy is None and fixed_anatomies and len(fixed_anatomies) == 1:
        anatomy = fixed_anatomies[0]
        assumptions.append({"field": "anatomy", "value": anatomy,
                            "source": f"{profile.modality} implies it"})

    regime, regime_rule, regime_source = _label_regime(profile, dims, vocab, warnings)

    props = _properties(profile, anatomy, dims, vocab, assumptions, warnings)

    resolved = {
        "task": profile.task,
        "table3_column": vocab.raw["tasks"][profile.task]["table3"],
        "modality": profile.modality,
        "anatomy": anatomy,
        "dimensionality": dims,
        "label_regime": regime,
        "label_regime_source": regime_source,
        "label_regime_rule": regime_rule,
        "labeled": profile.labeled,
        "unlabeled": profile.unlabeled,
        "classes": profile.classes,
        "properties": props,
    }
    return resolved, assumptions, warnings


def _label_regime(profile: TaskProfile, dims: str, vocab: Vocabulary,
                  warnings: list[dict[str, Any]]) -> tuple[str, str, str]:
    """The regime, the rule that gave it and why; count warnings go to `warnings`."""
    if profile.labeled is None:
        counts_given = profile.unlabeled is not None or profile.classes is not None
        if counts_given and profile.label_regime is None:
            raise ProfileConflict("labeled", "give `labeled` together with `unlabeled` or "
                                  "`classes`, or give `label_regime`")
        if profile.label_regime is None:
            raise ProfileConflict("label_regime", "give `label_regime` (none, few_shot, low, "
                                  "moderate, full) or the counts `labeled` and `unlabeled`")
        return profile.label_regime, "given", "given"
    facts = count_facts(profile.labeled, profile.unlabeled, profile.classes, dims,
                        profile.task)
    for check in vocab.count_warnings:
        if check.when(facts):
            warnings.append({"code": check.code, "message": check.message.format_map(facts)})
    derived = derive_label_regime(profile.labeled, profile.unlabeled, profile.classes, vocab,
                                  dims, profile.task)
    if profile.label_regime is not None and profile.label_regime != derived.regime:
        raise ProfileConflict(
            "label_regime",
            f"label_regime '{profile.label_regime}' contradicts the counts, which give "
            f"'{derived.regime}' ({derived.why}; rule {derived.rule}); give one or the other",
        )
    return derived.regime, derived.rule, f"derived: {derived.why}"


def property_defaults(vocab: Vocabulary, modality: str, anatomy: str | None,
                      dims: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Property values before the user's own, and where each came from; the layers are
    applied in vocabulary.yaml's `default_precedence` order, a later one overriding an
    earlier one. Memoised per vocabulary (treat the result as read-only)."""
    key = (modality, anatomy, dims)
    hit = vocab.memo.get(key)
    if hit is not None:
        return hit
    raw = vocab.raw
    layers: dict[str, tuple[str, dict[str, Any]]] = {
        "global": ("global default", raw["global_defaults"]),
        "modality": (f"default for modality {modality}", vocab.modality(modality)["defaults"]),
        "anatomy": (f"default for anatomy {anatomy}",
                    raw["anatomy_defaults"].get(anatomy, {}) if anatomy else {}),
        "pair": (f"default for {modality} of the {anatomy}",
                 raw["pair_defaults"].get(f"{modality}:{anatomy}", {}) if anatomy else {}),
        "dims": (f"dimensionality {dims}", (raw.get("dims_defaults") or {}).get(dims, {})),
    }
    props: dict[str, Any] = {"lesion_scale": None, "gpu_memory_gb": None}
    source: dict[str, str] = {}
    for layer in raw["default_precedence"]:
        name, values = layers[layer]
        for k, value in values.items():
            props[k] = value
            source[k] = name
    vocab.memo[key] = (props, source)
    return props, source


def _properties(
    profile: TaskProfile,
    anatomy: str | None,
    dims: str,
    vocab: Vocabulary,
    assumptions: list[dict[str, Any]],
    warnings: list[dict[str, Any]],
) -> dict[str, Any]:
    given = profile.properties.model_dump(exclude_none=True)
    defaults, source = property_defaults(vocab, profile.modality, anatomy, dims)
    props = dict(defaults)
    source = dict(source)
    for key, value in given.items():
        if key in source and props.get(key) != value and source[key] != "global default":
            warnings.append({
                "code": "input_overrides_default",
                "message": f"{key}={value!r} overrides the {source[key]} ({props.get(key)!r})",
            })
        props[key] = value
        source[key] = "given"

    if dims == "video" and props["temporal"] is False:
        raise ProfileConflict("properties.temporal", "video data is temporal; temporal=false "
                              "contradicts dimensionality video")
    for key, (modalities, why) in vocab.property_applies.items():
        if props.get(key) and profile.modality not in modalities:
            raise ProfileConflict(
                f"properties.{key}",
                f"{key}={json.dumps(props[key])} does not apply to {profile.modality}: "
                f"{why}; it applies to {', '.join(sorted(modalities))}")
    paired = [m for m in props.get("paired_modalities") or [] if m != profile.modality]
    if len(paired) != len(props.get("paired_modalities") or []):
        warnings.append({"code": "input_paired_same_modality",
                         "message": f"paired_modalities listed {profile.modality} itself; "
                                    "ignored"})
    props["paired_modalities"] = paired

    for key in sorted(props):
        if source.get(key) not in (None, "given") and key not in ("paired_modalities",):
            assumptions.append({"field": f"properties.{key}", "value": props[key],
                                "source": source[key]})
    return props
