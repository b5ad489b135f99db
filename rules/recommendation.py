"""The recommendation as returned by the engine, the REST API and `taskalign recommend --json`."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from .profile import Assumption, ResolvedProfile


class Evidence(BaseModel):
    """A citation in short form: a reviewed study (`source: review`, full entry at
    GET /v1/references/{id}), or one of TaskAlign's own measurements (`source: project`,
    id `project:<card>#<metric>`), named by the encoder card (GET /v1/encoders/{card})
    and metric it comes from."""

    id: int | str
    authors: str
    year: int
    source: Literal["review", "project"] = "review"
    card: str | None = None
    """project: the encoder repository whose card holds the figure (GET /v1/encoders/...)."""
    method: str | None = None
    metric: str | None = None
    """project: `protocol@label_fraction:METRIC`, e.g. linear_probe@0.1:AUC."""
    value: float | None = None
    random_init: float | None = None
    vs_best_ci95: list[float] | None = None
    verdict: Literal["agrees", "disagrees", "inconclusive"] | None = None
    """project: against the review's expectation of a gain."""
    rule: str | None = None


class Alignment(BaseModel):
    rating: str
    column: str
    family_label: str
    sections: list[str]
    why: str | None = None


class AvoidedAugmentation(BaseModel):
    name: str
    rule: str
    reason: str


class Augmentations(BaseModel):
    use: list[str]
    avoid: list[AvoidedAugmentation]
    sources: dict[str, str] = {}
    """For each name in `use`, the rule that put it there (`catalog.<method>`: the method's own)."""


class Reason(BaseModel):
    """One line of a method's rationale and the rule (or catalog entry) it comes from."""

    text: str
    rule: str


class Note(BaseModel):
    text: str
    rule: str
    sections: list[str]
    measurements: list[Evidence] = []
    """TaskAlign's own measurements the note reports (`source: project`), if any."""


class HyperparameterChange(BaseModel):
    name: str
    before: Any
    after: Any
    rule: str


class MethodRecommendation(BaseModel):
    rank: int
    id: str
    name: str
    family: str
    granularity: str
    score: float
    alignment: Alignment
    hyperparameters: dict[str, Any]
    hyperparameter_changes: list[HyperparameterChange]
    augmentations: Augmentations
    data_needs: list[str]
    pretrainable: bool | None
    """Whether this installation implements the objective (None: unknown, no zoo installed)."""
    literature_only: str | None = None
    """Set when the catalog marks the method as literature-only: why it cannot be
    pretrained here (its defining input is not available), so a user knows before trying."""
    rationale: list[Reason]
    supports: list[Evidence]
    """Studies in the method's favour for this task: its catalog entry, a Table 3 cell that
    is not weak, and the rules that raised it."""
    cautions: list[Evidence]
    """Studies the review uses against it for this task: a weak Table 3 cell, the rules that
    lowered it, and study-table rows with stance `cautions`."""


class Excluded(BaseModel):
    id: str
    reasons: list[str]


class Warning(BaseModel):
    code: str
    severity: str
    message: str
    rule: str
    evidence: list[Evidence]


class LabelAdvice(BaseModel):
    regime: str
    derived_from: str
    regime_rule: str
    """The step of vocabulary.yaml's label_regime table that chose the regime, or `given`."""
    rule: str
    """The advice entry: `advice.<regime>` or `advice.<regime>.<task>`."""
    expected_benefit: str
    evaluation: str
    adaptation: str
    sections: list[str]
    evidence: list[Evidence]


class TraceEffect(BaseModel):
    kind: str
    detail: str
    methods: list[str] = []


class TraceEntry(BaseModel):
    rule: str
    file: str
    effects: list[TraceEffect]


class EngineInfo(BaseModel):
    knowledge_fingerprint: str
    methods_in_catalog: int
    rules_loaded: int


class Recommendation(BaseModel):
    profile: ResolvedProfile
    assumptions: list[Assumption]
    recommendations: list[MethodRecommendation]
    excluded: list[Excluded]
    warnings: list[Warning]
    label_advice: LabelAdvice
    augmentations: Augmentations
    notes: list[Note]
    alignment_note: str
    trace: list[TraceEntry]
    engine: EngineInfo


T = TypeVar("T")


class Sourced(BaseModel, Generic[T]):
    """A default value and where it came from: the table entry, the review's sections and
    references, or `source` when the value is the project's own choice."""

    value: T
    rule: str
    sections: list[str]
    evidence: list[Evidence]
    source: str | None = None


class FinetuneDefaults(BaseModel):
    """Fine-tuning settings for a profile (rules/tables/finetune.yaml)."""

    task: str
    label_regime: str
    label_regime_source: str
    label_regime_rule: str
    mode: Sourced[Literal["linear_probe", "full"]]
    epochs: Sourced[int]
    lr: Sourced[float]
    encoder_lr_multiplier: Sourced[float]
    batch_size: Sourced[int]
    augmentations: Sourced[list[str]]
