"""Task profiles: what the user tells us, validated and normalised, and the facts derived
from it (dimensionality, label regime, property defaults), each derivation recorded."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from .vocabulary import UnknownValueError, Vocabulary, load_vocabulary


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
    gpu_memory_gb: float | None = Field(None, gt=0, le=4096, description="GPU memory per device.")

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
    labeled: int | None = Field(None, ge=0, le=10**9, description="Number of labelled images.")
    unlabeled: int | None = Field(None, ge=0, le=10**10, description="Number of unlabelled images.")
    classes: int | None = Field(None, ge=1, le=100_000, description="Number of classes.")
    properties: Properties = Field(default_factory=Properties)
    top_k: int = Field(10, ge=1, le=100, description="How many ranked methods to return.")

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


def derive_label_regime(
    labeled: int, unlabeled: int | None, classes: int | None, vocab: Vocabulary
) -> tuple[str, str]:
    """Apply vocabulary.yaml's label_thresholds in order; return regime and the reason."""
    total = labeled + (unlabeled or 0)
    fraction = labeled / total if total else 0.0
    for step in vocab.raw["label_thresholds"]:
        regime = step["regime"]
        if regime == "none" and labeled == 0:
            return regime, "labeled == 0"
        if regime == "few_shot":
            per_class_max = step["per_class_max"]
            if classes and labeled / classes <= per_class_max:
                return regime, f"{labeled / classes:.1f} labels per class <= {per_class_max}"
            if not classes and labeled <= step["total_max_without_classes"]:
                return regime, f"{labeled} labels <= {step['total_max_without_classes']}"
        if "fraction_below" in step and unlabeled and fraction < step["fraction_below"]:
            return regime, f"labeled fraction {fraction:.3f} < {step['fraction_below']}"
        if regime == "full":
            return regime, f"labeled fraction {fraction:.3f} (no large unlabeled pool)"
    raise AssertionError("label_thresholds must end with an unconditional regime")


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

    regime, regime_source = _label_regime(profile, vocab)

    props = _properties(profile, anatomy, dims, vocab, assumptions, warnings)

    resolved = {
        "task": profile.task,
        "table3_column": vocab.raw["tasks"][profile.task]["table3"],
        "modality": profile.modality,
        "anatomy": anatomy,
        "dimensionality": dims,
        "label_regime": regime,
        "label_regime_source": regime_source,
        "labeled": profile.labeled,
        "unlabeled": profile.unlabeled,
        "classes": profile.classes,
        "properties": props,
    }
    return resolved, assumptions, warnings


def _label_regime(profile: TaskProfile, vocab: Vocabulary) -> tuple[str, str]:
    if profile.labeled is None:
        counts_given = profile.unlabeled is not None or profile.classes is not None
        if counts_given and profile.label_regime is None:
            raise ProfileConflict("labeled", "give `labeled` together with `unlabeled` or "
                                  "`classes`, or give `label_regime`")
        if profile.label_regime is None:
            raise ProfileConflict("label_regime", "give `label_regime` (none, few_shot, low, "
                                  "moderate, full) or the counts `labeled` and `unlabeled`")
        return profile.label_regime, "given"
    derived, why = derive_label_regime(profile.labeled, profile.unlabeled, profile.classes, vocab)
    if profile.label_regime is not None and profile.label_regime != derived:
        raise ProfileConflict(
            "label_regime",
            f"label_regime '{profile.label_regime}' contradicts the counts, which give "
            f"'{derived}' ({why}); give one or the other",
        )
    return derived, f"derived: {why}"


def property_defaults(vocab: Vocabulary, modality: str, anatomy: str | None,
                      dims: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Property values before the user's own, and where each came from; the layers are
    global, modality, anatomy, modality-anatomy pair, then video. Memoised per vocabulary
    (treat the result as read-only)."""
    key = (modality, anatomy, dims)
    hit = vocab.memo.get(key)
    if hit is not None:
        return hit
    layers: list[tuple[str, dict[str, Any]]] = [
        ("global default", vocab.raw["global_defaults"]),
        (f"default for modality {modality}", vocab.modality(modality)["defaults"]),
    ]
    if anatomy:
        layers.append((f"default for anatomy {anatomy}",
                       vocab.raw["anatomy_defaults"].get(anatomy, {})))
        layers.append((f"default for {modality} of the {anatomy}",
                       vocab.raw["pair_defaults"].get(f"{modality}:{anatomy}", {})))
    if dims == "video":
        layers.append(("dimensionality video", {"temporal": True}))
    props: dict[str, Any] = {"lesion_scale": None, "gpu_memory_gb": None}
    source: dict[str, str] = {}
    for name, layer in layers:
        for k, value in layer.items():
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
    if props.get("kspace") and profile.modality != "mri":
        raise ProfileConflict("properties.kspace", f"k-space data exists only for mri, "
                              f"not {profile.modality}")
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
