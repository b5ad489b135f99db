"""Load and validate the knowledge files: method catalog, augmentations, references,
Table 3 and the rule tables. Any inconsistency stops loading with the file and rule id."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .conditions import ConditionError, Predicate, compile_condition, facts_in
from .studies import Study, load_studies, study_rules
from .vocabulary import KINDS, PACKAGE_DIR, Vocabulary

RefId = int | str
Family = Literal["contrastive_global", "contrastive_local", "predictive", "generative", "hybrid"]


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class KnowledgeError(ValueError):
    """A knowledge file is invalid; names the file and the entry."""

    def __init__(self, file: str, entry: str, message: str):
        self.file, self.entry = file, entry
        super().__init__(f"{file}: {entry}: {message}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Method(Strict):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    family: Family
    granularity: Literal["global", "local", "dense"]
    dims: list[Literal["2d", "3d", "video"]]
    needs: list[str] = []
    modalities: list[str] | None = None
    anatomies: list[str] | None = None
    tags: list[str] = []
    large_batch: bool = False
    hyperparameters: dict[str, Any] = {}
    augmentations: list[str] = []
    references: list[RefId]
    summary: str
    literature_only: str | None = None
    """Why this project cannot pretrain it: the defining input (meshes, tractography,
    fMRI graphs, an atlas) is one no public set beside it provides. Reported, not hidden."""


class Reference(Strict):
    id: RefId
    authors: str
    year: int
    title: str
    venue: str = ""
    cited_in: list[str] = []
    note: str | None = None


class Selector(Strict):
    """Which methods an effect touches; all given keys must match, list entries are alternatives."""

    methods: list[str] | None = None
    families: list[Family] | None = None
    tags: list[str] | None = None
    not_tags: list[str] | None = None
    granularity: list[str] | None = None
    has_hyperparameter: str | None = None
    large_batch: bool | None = None
    not_dims: list[Literal["2d", "3d", "video"]] | None = None  # methods defined for none

    def matches(self, m: Method) -> bool:
        return (
            (self.methods is None or m.id in self.methods)
            and (self.families is None or m.family in self.families)
            and (self.tags is None or bool(set(self.tags) & set(m.tags)))
            and (self.not_tags is None or not set(self.not_tags) & set(m.tags))
            and (self.granularity is None or m.granularity in self.granularity)
            and (self.has_hyperparameter is None or self.has_hyperparameter in m.hyperparameters)
            and (self.large_batch is None or m.large_batch == self.large_batch)
            and (self.not_dims is None or not set(self.not_dims) & set(m.dims))
        )


class ScoreEffect(Strict):
    select: Selector
    add: float


class HyperparameterEffect(Strict):
    select: Selector
    name: str
    set: Any = None
    max: float | None = None
    min: float | None = None
    raise_min: float | None = None

    @model_validator(mode="after")
    def _one_op(self) -> HyperparameterEffect:
        ops = [k for k in ("set", "max", "min", "raise_min") if getattr(self, k) is not None]
        if len(ops) != 1:
            raise ValueError(f"give exactly one of set, max, min, raise_min (got {ops})")
        return self


class AugmentEffect(Strict):
    use: list[str] = []
    avoid: list[str] = []


class WarnEffect(Strict):
    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    severity: Literal["low", "medium", "high"]
    message: str


class Effect(Strict):
    score: ScoreEffect | None = None
    hyperparameter: HyperparameterEffect | None = None
    augment: AugmentEffect | None = None
    warn: WarnEffect | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Effect:
        kinds = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"an effect has exactly one kind, got {kinds or 'none'}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)


class CitedEffects(Strict):
    """What rules and consistency checks share: effects, and where they come from."""

    description: str
    effects: list[Effect] = Field(min_length=1)
    rationale: str
    refs: list[RefId] = []
    sections: list[str] = []
    source: str | None = None

    @model_validator(mode="after")
    def _cited(self) -> CitedEffects:
        if not (self.refs or self.source):
            kind = type(self).__name__.lower()
            raise ValueError(f"give refs from the review, or `source:` when the {kind} is ours")
        return self


class Measurement(Strict):
    """A figure from one of the project's own encoder cards (zoo/seed/<card>/card.json),
    cited as `project` evidence beside the review's references. tests/rules checks every
    figure against the card it names."""

    card: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*\.[a-z0-9][a-z0-9-]*$")
    year: int = Field(ge=2025, description="When the card's numbers were measured.")
    method: str
    protocol: str
    label_fraction: float = Field(gt=0, le=1)
    metric: str = "AUC"
    value: float
    random_init: float
    vs_best_ci95: tuple[float, float] | None = Field(
        None, description="Paired bootstrap 95 % interval of SSL minus the best random init.")
    verdict: Literal["agrees", "disagrees", "inconclusive"] = Field(
        description="Against the review's expectation of a gain: agrees when the interval "
                    "is above 0, disagrees when below, inconclusive otherwise.")


class Rule(CitedEffects):
    id: str = Field(pattern=r"^[a-z0-9_.]+$")
    when: dict[str, Any]
    measurements: list[Measurement] = []


class Cell(Strict):
    rating: Literal["strong", "moderate", "weak"]
    sections: list[str]
    refs: list[RefId] = []
    why: str | None = None
    per_task: dict[str, Literal["strong", "moderate", "weak"]] = {}


class AlignmentTable(Strict):
    note: str
    points: dict[Literal["strong", "moderate", "weak"], float]
    families: dict[Family, dict[str, str]]
    columns: dict[str, dict[str, Any]]
    cells: dict[Family, dict[str, Cell]]


class CheckCondition(Strict):
    """What an answer must contain for a consistency check to fire (all given keys)."""

    warning: str | None = None
    avoided: str | None = None
    returned_tag: str | None = None
    returned_family: Family | None = None
    k: int = Field(3, ge=1, le=100)


class Check(CitedEffects):
    id: str = Field(pattern=r"^c\.[a-z0-9_.]+$")
    when: CheckCondition = Field(alias="if")

    @model_validator(mode="after")
    def _answer_effects_only(self) -> Check:
        if any(e.score or e.hyperparameter for e in self.effects):
            raise ValueError("checks run on a finished ranking: only augment, note and warn")
        return self


class TaskAdvice(Strict):
    """What changes in a regime's advice for one task; unset fields keep the regime's."""

    expected_benefit: str | None = None
    evaluation: str | None = None
    adaptation: str | None = None
    refs: list[RefId] = []
    sections: list[str] = []
    source: str | None = None


class RegimeAdvice(Strict):
    expected_benefit: str
    evaluation: str
    adaptation: str
    refs: list[RefId]
    sections: list[str]
    by_task: dict[str, TaskAdvice] = {}

    def for_task(self, task: str) -> tuple[str, dict[str, Any]]:
        """The advice for a task as (id suffix, fields); the task entry wins over the regime."""
        fields = {"expected_benefit": self.expected_benefit, "evaluation": self.evaluation,
                  "adaptation": self.adaptation, "refs": list(self.refs),
                  "sections": list(self.sections)}
        over = self.by_task.get(task)
        if over is None:
            return "", fields
        for name in ("expected_benefit", "evaluation", "adaptation"):
            if getattr(over, name) is not None:
                fields[name] = getattr(over, name)
        fields["refs"] = list(dict.fromkeys([*over.refs, *fields["refs"]]))
        fields["sections"] = list(dict.fromkeys([*over.sections, *fields["sections"]]))
        return f".{task}", fields


class FinetuneValues(Strict):
    """The values a fine-tuning entry may set; the first entry of the table sets them all."""

    mode: Literal["linear_probe", "full"] | None = None
    epochs: int | None = Field(None, ge=1, le=500)
    lr: float | None = Field(None, gt=0, le=1)
    encoder_lr_multiplier: float | None = Field(None, gt=0, le=1)
    batch_size: int | None = Field(None, ge=2, le=4096)
    augmentations: list[str] | None = None


class FinetuneEntry(Strict):
    id: str = Field(pattern=r"^[a-z0-9_.]+$")
    description: str
    when: dict[str, Any] | None = None
    set: FinetuneValues
    rationale: str
    refs: list[RefId] = []
    sections: list[str] = []
    source: str | None = None

    @model_validator(mode="after")
    def _cited(self) -> FinetuneEntry:
        if not (self.refs or self.sections or self.source):
            raise ValueError("give refs/sections from the review, or `source:` when it is ours")
        return self


@dataclass
class LoadedFinetuneEntry:
    entry: FinetuneEntry
    predicate: Predicate | None  # None: always applies


@dataclass
class LoadedRule:
    rule: Rule
    file: str
    predicate: Predicate
    # Per effect, the ids of the catalog methods its selector picks (precomputed).
    selected: list[frozenset[str]]


@dataclass
class Knowledge:
    vocabulary: Vocabulary
    methods: dict[str, Method]
    augmentations: dict[str, dict[str, Any]]
    references: dict[RefId, Reference]
    alignment: AlignmentTable
    regime_advice: dict[str, RegimeAdvice]
    rules: list[LoadedRule]
    checks: list[Check]
    studies: list[Study]
    needs: dict[str, tuple[Predicate, str]]
    finetune: list[LoadedFinetuneEntry]
    # Every fact that a rule or a `need` condition reads, so that which rules fire can be
    # worked out once per combination of these values.
    condition_facts: tuple[str, ...]
    fingerprint: str
    files: list[str] = field(default_factory=list)

    def expand_augmentations(self, names: list[str]) -> list[str]:
        """Resolve `tag:x` entries to the augmentations carrying that tag."""
        out: list[str] = []
        for name in names:
            if name.startswith("tag:"):
                tag = name[4:]
                out.extend(a for a, e in self.augmentations.items() if tag in e.get("tags", []))
            else:
                out.append(name)
        return out


RULE_FILES = [
    "objectives.yaml",
    "modality.yaml",
    "label_regime.yaml",
    "transfer.yaml",
    "multimodal_hybrid.yaml",
    "signal_organization.yaml",
    "practice.yaml",
    "measured.yaml",  # TaskAlign's own measurements: notes only
]


def _read(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_LOADER)
    except yaml.YAMLError as err:
        raise KnowledgeError(path.name, "yaml", str(err)) from None


def _fact_domains(vocab: Vocabulary) -> dict[str, set[str] | None]:
    """Every fact a condition may read, with its closed set of values (None: open).
    Profile properties are facts by their field names, so a new property needs no edit here."""
    from .profile import PROPERTY_VOCABULARY, Properties

    def values(kind: str) -> set[str]:
        return {str(k) for k in vocab.raw[KINDS[kind]]}

    domains: dict[str, set[str] | None] = {
        "task": values("task"),
        "table3": {str(t["table3"]) for t in vocab.raw["tasks"].values()},
        "modality": values("modality"),
        "anatomy": values("anatomy"),
        "dims": values("dimensionality"),
        "label_regime": values("label_regime"),
        "paired": None,
        **{k: None for k in ("labeled", "unlabeled", "classes")},
    }
    for name in Properties.model_fields:
        kind = PROPERTY_VOCABULARY.get(name)
        domains[name] = values(kind) if kind else None
    return domains


def load_knowledge(root: Path | None = None, vocabulary: Vocabulary | None = None) -> Knowledge:
    root = root or PACKAGE_DIR
    from .vocabulary import load_vocabulary

    vocab = vocabulary or load_vocabulary(root / "vocabulary.yaml")
    digest = hashlib.sha256((root / "vocabulary.yaml").read_bytes())
    files: list[str] = ["vocabulary.yaml"]

    def read(rel: str) -> Any:
        path = root / rel
        if not path.is_file():
            raise KnowledgeError(rel, "file", f"missing from {root}; a knowledge directory "
                                 "needs every file the packaged rules/ has (copy new ones "
                                 "from there, e.g. tables/finetune.yaml)")
        digest.update(rel.encode() + path.read_bytes())
        files.append(rel)
        return _read(path)

    refs_doc = read("references.yaml")
    references: dict[RefId, Reference] = {}
    for raw in refs_doc["references"]:
        try:
            ref = Reference.model_validate(raw)
        except ValidationError as err:
            raise KnowledgeError("references.yaml", str(raw.get("id")), str(err)) from None
        if ref.id in references:
            raise KnowledgeError("references.yaml", str(ref.id), "duplicate reference id")
        references[ref.id] = ref

    def check_refs(file: str, entry: str, refs: list[RefId]) -> None:
        for r in refs:
            if r not in references:
                raise KnowledgeError(file, entry, f"unknown reference {r!r}")

    augmentations = read("catalog/augmentations.yaml")["augmentations"]
    aug_tags = {t for a in augmentations.values() for t in a.get("tags", [])}

    def check_augs(file: str, entry: str, names: list[str]) -> None:
        for name in names:
            ok = name[4:] in aug_tags if name.startswith("tag:") else name in augmentations
            if not ok:
                raise KnowledgeError(file, entry, f"unknown augmentation {name!r}")

    needs: dict[str, tuple[Predicate, str]] = {}
    domains = _fact_domains(vocab)
    for key, spec in vocab.raw["needs"].items():
        try:
            needs[key] = (compile_condition(spec["condition"], domains, f"needs.{key}"),
                          spec["missing"])
        except ConditionError as err:
            raise KnowledgeError("vocabulary.yaml", f"needs.{key}", str(err)) from None

    methods: dict[str, Method] = {}
    for rel in sorted(p.relative_to(root).as_posix() for p in (root / "catalog").glob("*.yaml")):
        if rel.endswith("augmentations.yaml"):
            continue
        for raw in read(rel).get("methods", []):
            entry = str(raw.get("id", "?"))
            try:
                method = Method.model_validate(raw)
            except ValidationError as err:
                raise KnowledgeError(rel, entry, str(err)) from None
            if method.id in methods:
                raise KnowledgeError(rel, entry, "duplicate method id")
            check_refs(rel, entry, method.references)
            check_augs(rel, entry, method.augmentations)
            for need in method.needs:
                if need not in needs:
                    raise KnowledgeError(rel, entry, f"unknown need {need!r}; known: "
                                         f"{', '.join(needs)}")
            for mod in method.modalities or []:
                if mod not in domains["modality"]:
                    raise KnowledgeError(rel, entry, f"unknown modality {mod!r}")
            for anatomy in method.anatomies or []:
                if anatomy not in domains["anatomy"]:
                    raise KnowledgeError(rel, entry, f"unknown anatomy {anatomy!r}")
            methods[method.id] = method

    try:
        alignment = AlignmentTable.model_validate(read("tables/alignment.yaml"))
    except ValidationError as err:
        raise KnowledgeError("tables/alignment.yaml", "table", str(err)) from None
    for fam, row in alignment.cells.items():
        for col, cell in row.items():
            if col not in alignment.columns:
                raise KnowledgeError("tables/alignment.yaml", f"{fam}.{col}", "unknown column")
            check_refs("tables/alignment.yaml", f"{fam}.{col}", cell.refs)
    if set(domains["table3"]) - set(alignment.columns):
        raise KnowledgeError("tables/alignment.yaml", "columns",
                             "a task maps to a column Table 3 lacks")

    regime_doc = read("tables/label_regime.yaml")
    regime_advice = {}
    for regime, raw in regime_doc["advice"].items():
        try:
            regime_advice[regime] = RegimeAdvice.model_validate(raw)
        except ValidationError as err:
            raise KnowledgeError("tables/label_regime.yaml", f"advice.{regime}", str(err)) from None
    missing = domains["label_regime"] - set(regime_advice)
    if missing:
        raise KnowledgeError("tables/label_regime.yaml", "advice", f"missing {sorted(missing)}")
    for regime, advice in regime_advice.items():
        for task, over in advice.by_task.items():
            entry = f"advice.{regime}.by_task.{task}"
            if task not in domains["task"]:
                raise KnowledgeError("tables/label_regime.yaml", entry, "unknown task")
            check_refs("tables/label_regime.yaml", entry, over.refs)

    all_tags = {t for m in methods.values() for t in m.tags}
    all_hparams = {h for m in methods.values() for h in m.hyperparameters}
    rules: list[LoadedRule] = []
    seen: set[str] = set()
    for name in RULE_FILES:
        rel = f"tables/{name}"
        doc = regime_doc if name == "label_regime.yaml" else read(rel)
        for raw in doc.get("rules", []):
            entry = str(raw.get("id", "?"))
            try:
                rule = Rule.model_validate(raw)
                predicate = compile_condition(rule.when, domains)
            except (ValidationError, ConditionError) as err:
                raise KnowledgeError(rel, entry, str(err)) from None
            if rule.id in seen:
                raise KnowledgeError(rel, entry, "duplicate rule id")
            seen.add(rule.id)
            check_refs(rel, entry, rule.refs)
            for m in rule.measurements:
                if m.method not in methods:
                    raise KnowledgeError(rel, entry, f"measurements: method {m.method!r} is "
                                         "not in the catalog")
            selected = []
            for effect in rule.effects:
                sel = (effect.score or effect.hyperparameter)
                if effect.augment:
                    check_augs(rel, entry, effect.augment.use + effect.augment.avoid)
                if sel is None:
                    selected.append(frozenset())
                    continue
                s = sel.select
                for t in (s.tags or []) + (s.not_tags or []):
                    if t not in all_tags:
                        raise KnowledgeError(rel, entry, f"no method has tag {t!r}")
                for mid in s.methods or []:
                    if mid not in methods:
                        raise KnowledgeError(rel, entry, f"unknown method {mid!r}")
                if s.has_hyperparameter and s.has_hyperparameter not in all_hparams:
                    raise KnowledgeError(rel, entry,
                                         f"no method has hyperparameter {s.has_hyperparameter!r}")
                picked = frozenset(m.id for m in methods.values() if s.matches(m))
                if not picked:
                    raise KnowledgeError(rel, entry, "selector matches no method")
                selected.append(picked)
            rules.append(LoadedRule(rule=rule, file=rel, predicate=predicate, selected=selected))

    studies_doc = read("tables/studies.yaml")
    try:
        studies = load_studies(studies_doc, domains, set(methods))
    except (ValidationError, ValueError) as err:
        raise KnowledgeError("tables/studies.yaml", "studies", str(err)) from None
    for row in studies:
        check_refs("tables/studies.yaml", f"ref {row.ref}", [row.ref])
    for raw in study_rules(studies, domains):
        rule = Rule.model_validate(raw)
        if rule.id in seen:
            raise KnowledgeError("tables/studies.yaml", rule.id, "duplicate rule id")
        seen.add(rule.id)
        selected = [frozenset(e.score.select.methods or ()) if e.score else frozenset()
                    for e in rule.effects]
        rules.append(LoadedRule(rule=rule, file="tables/studies.yaml",
                                predicate=compile_condition(rule.when, domains),
                                selected=selected))

    checks: list[Check] = []
    codes = {e.warn.code for lr in rules for e in lr.rule.effects if e.warn}
    for raw in read("tables/consistency.yaml").get("checks") or []:
        entry = str(raw.get("id", "?"))
        try:
            check = Check.model_validate(raw)
        except ValidationError as err:
            raise KnowledgeError("tables/consistency.yaml", entry, str(err)) from None
        if check.id in seen:
            raise KnowledgeError("tables/consistency.yaml", entry, "duplicate id")
        seen.add(check.id)
        c = check.when
        if c.warning and c.warning not in codes:
            raise KnowledgeError("tables/consistency.yaml", entry,
                                 f"no rule gives warning {c.warning!r}")
        if c.returned_tag and c.returned_tag not in all_tags:
            raise KnowledgeError("tables/consistency.yaml", entry,
                                 f"no method has tag {c.returned_tag!r}")
        check_augs("tables/consistency.yaml", entry, [c.avoided] if c.avoided else [])
        check_refs("tables/consistency.yaml", entry, check.refs)
        for e in check.effects:
            if e.augment:
                check_augs("tables/consistency.yaml", entry, e.augment.use + e.augment.avoid)
        checks.append(check)

    finetune = _load_finetune(read("tables/finetune.yaml"), domains, check_refs, check_augs)

    return Knowledge(
        vocabulary=vocab,
        methods=methods,
        augmentations=augmentations,
        references=references,
        alignment=alignment,
        regime_advice=regime_advice,
        rules=rules,
        checks=checks,
        studies=studies,
        needs=needs,
        finetune=finetune,
        condition_facts=tuple(sorted(
            set().union(*(facts_in(lr.rule.when) for lr in rules),
                        *(facts_in(spec["condition"]) for spec in vocab.raw["needs"].values())))),
        fingerprint=digest.hexdigest()[:16],
        files=files,
    )


def _load_finetune(doc: Any, domains: dict[str, set[str] | None],
                   check_refs: Callable[[str, str, list[RefId]], None],
                   check_augs: Callable[[str, str, list[str]], None]
                   ) -> list[LoadedFinetuneEntry]:
    rel = "tables/finetune.yaml"
    loaded: list[LoadedFinetuneEntry] = []
    for i, raw in enumerate(doc.get("settings") or []):
        name = str(raw.get("id", "?")) if isinstance(raw, dict) else f"settings[{i}]"
        try:
            entry = FinetuneEntry.model_validate(raw)
            predicate = None if entry.when is None else compile_condition(entry.when, domains)
        except (ValidationError, ConditionError) as err:
            raise KnowledgeError(rel, name, str(err)) from None
        if any(e.entry.id == entry.id for e in loaded):
            raise KnowledgeError(rel, name, "duplicate id")
        check_refs(rel, name, entry.refs)
        check_augs(rel, name, entry.set.augmentations or [])
        loaded.append(LoadedFinetuneEntry(entry, predicate))
    if not loaded:
        raise KnowledgeError(rel, "settings", "no entries")
    first = loaded[0].entry
    unset = [k for k, v in first.set if v is None]
    if first.when is not None or unset:
        raise KnowledgeError(rel, first.id, "the first entry must apply always (no `when`) and "
                             f"set every value; missing {unset}")
    return loaded
