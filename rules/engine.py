"""Evaluate the knowledge base against a task profile.

The engine has no domain logic of its own: eligibility comes from each method's declared
needs, the base score from Table 3, and every adjustment from a rule in rules/tables/.
Scores are sums, ties break on method id, so the same profile always gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .knowledge import HyperparameterEffect, Knowledge, Method, RefId, load_knowledge
from .profile import TaskProfile, resolve
from .recommendation import (
    Alignment,
    Augmentations,
    AvoidedAugmentation,
    EngineInfo,
    Evidence,
    Excluded,
    HyperparameterChange,
    LabelAdvice,
    MethodRecommendation,
    Recommendation,
    TraceEffect,
    TraceEntry,
    Warning,
)


@dataclass
class _MethodState:
    method: Method
    score: float = 0.0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    changes: list[HyperparameterChange] = field(default_factory=list)
    raised_by: list[tuple[str, str, list[RefId]]] = field(default_factory=list)
    lowered_by: list[tuple[str, str]] = field(default_factory=list)


def short_authors(authors: str) -> str:
    """'W. Bai, C. Chen, and G. Tarroni' -> 'Bai et al.'; keeps a single author whole."""
    first = authors.split(",")[0].split(" and ")[0].strip()
    surname = first.split()[-1] if first else authors
    several = "," in authors or " and " in authors
    return f"{surname} et al." if several else surname


class Engine:
    def __init__(self, knowledge: Knowledge):
        self.kb = knowledge
        self._evidence = {
            rid: Evidence(id=r.id, authors=short_authors(r.authors), year=r.year)
            for rid, r in knowledge.references.items()
        }
        self._support = {
            mid: sum(isinstance(r, int) for r in m.references)
            for mid, m in knowledge.methods.items()
        }
        self._info = EngineInfo(
            knowledge_fingerprint=knowledge.fingerprint,
            methods_in_catalog=len(knowledge.methods),
            rules_loaded=len(knowledge.rules),
        )

    @property
    def info(self) -> EngineInfo:
        return self._info

    def evidence(self, refs: list[RefId]) -> list[Evidence]:
        seen: dict[RefId, None] = dict.fromkeys(refs)
        return [self._evidence[r] for r in seen]

    def recommend(self, profile: TaskProfile) -> Recommendation:
        kb = self.kb
        resolved, assumptions, input_warnings = resolve(profile, kb.vocabulary)
        facts = resolved.facts()
        trace: list[TraceEntry] = []

        states: dict[str, _MethodState] = {}
        excluded: list[Excluded] = []
        for m in kb.methods.values():
            reasons = []
            if facts["dims"] not in m.dims:
                reasons.append(f"supports {', '.join(m.dims)}, not {facts['dims']}")
            if m.modalities and facts["modality"] not in m.modalities:
                reasons.append(f"specific to {', '.join(m.modalities)}")
            if m.anatomies and facts["anatomy"] not in m.anatomies:
                reasons.append(f"designed for {', '.join(m.anatomies)} anatomy")
            for need in m.needs:
                predicate, missing = kb.needs[need]
                if not predicate(facts):
                    reasons.append(missing)
            if reasons:
                excluded.append(Excluded(id=m.id, reasons=reasons))
            else:
                # Shared with the catalog until a rule changes it (copy on write).
                states[m.id] = _MethodState(method=m, hyperparameters=m.hyperparameters)

        self._apply_table3(facts, states, trace)

        use_extra: dict[str, str] = {}
        avoid: dict[str, tuple[str, str]] = {}
        warnings: list[Warning] = [
            Warning(code=w.code, severity="low", message=w.message, rule="input", evidence=[])
            for w in input_warnings
        ]
        notes: list[str] = []
        for lr in kb.rules:
            if not lr.predicate(facts):
                continue
            rule = lr.rule
            effects: list[TraceEffect] = []
            for effect, picked in zip(rule.effects, lr.selected, strict=True):
                if effect.score:
                    hit = sorted(picked & states.keys())
                    add = effect.score.add
                    for mid in hit:
                        st = states[mid]
                        st.score += add
                        if add > 0:
                            st.raised_by.append((rule.id, rule.rationale, rule.refs))
                        else:
                            st.lowered_by.append((rule.id, rule.rationale))
                    effects.append(TraceEffect(kind="score", detail=f"{add:+g}", methods=hit))
                elif effect.hyperparameter:
                    changed = self._apply_hyperparameter(effect.hyperparameter, picked, states,
                                                         rule.id)
                    hp = effect.hyperparameter
                    op = next(k for k in ("set", "max", "min", "raise_min")
                              if getattr(hp, k) is not None)
                    effects.append(TraceEffect(kind="hyperparameter",
                                               detail=f"{hp.name} {op} {getattr(hp, op)}",
                                               methods=changed))
                elif effect.augment:
                    for name in kb.expand_augmentations(effect.augment.use):
                        use_extra.setdefault(name, rule.id)
                    for name in kb.expand_augmentations(effect.augment.avoid):
                        avoid.setdefault(name, (rule.id, rule.description))
                    effects.append(TraceEffect(
                        kind="augment",
                        detail=f"use {effect.augment.use} avoid {effect.augment.avoid}"))
                elif effect.warn:
                    warnings.append(Warning(code=effect.warn.code, severity=effect.warn.severity,
                                            message=effect.warn.message, rule=rule.id,
                                            evidence=self.evidence(rule.refs)))
                    effects.append(TraceEffect(kind="warn", detail=effect.warn.code))
                elif effect.note:
                    notes.append(effect.note)
                    effects.append(TraceEffect(kind="note", detail=effect.note))
            trace.append(TraceEntry(rule=rule.id, file=lr.file, effects=effects))

        # Ties break on how many reviewed studies back the method, then on its id.
        ranked = sorted(states.values(), key=lambda s: (-round(s.score, 6),
                                                        -self._support[s.method.id], s.method.id))
        recs = [
            self._method_output(rank, st, facts, use_extra, avoid)
            for rank, st in enumerate(ranked[: profile.top_k], start=1)
        ]
        global_use = sorted(n for n in use_extra if n not in avoid)
        advice = kb.regime_advice[resolved.label_regime]
        return Recommendation(
            profile=resolved,
            assumptions=assumptions,
            recommendations=recs,
            excluded=sorted(excluded, key=lambda e: e.id),
            warnings=warnings,
            label_advice=LabelAdvice(
                regime=resolved.label_regime,
                derived_from=resolved.label_regime_source,
                expected_benefit=advice.expected_benefit,
                evaluation=advice.evaluation,
                adaptation=advice.adaptation,
                sections=advice.sections,
                evidence=self.evidence(advice.refs),
            ),
            augmentations=Augmentations(
                use=global_use,
                avoid=[AvoidedAugmentation(name=n, rule=r, reason=why)
                       for n, (r, why) in sorted(avoid.items())],
            ),
            notes=notes,
            alignment_note=kb.alignment.note,
            trace=trace,
            engine=self._info,
        )

    def _apply_table3(self, facts: dict[str, Any], states: dict[str, _MethodState],
                      trace: list[TraceEntry]) -> None:
        table = self.kb.alignment
        column = facts["table3"]
        by_family: dict[str, list[str]] = {}
        for mid, st in states.items():
            by_family.setdefault(st.method.family, []).append(mid)
        for family in sorted(by_family):
            cell = table.cells[family][column]
            rating = cell.per_task.get(facts["task"], cell.rating)
            points = table.points[rating]
            for mid in by_family[family]:
                states[mid].score += points
            trace.append(TraceEntry(
                rule=f"table3.{family}.{column}",
                file="tables/alignment.yaml",
                effects=[TraceEffect(kind="score", detail=f"{rating} {points:+g}",
                                     methods=sorted(by_family[family]))],
            ))

    @staticmethod
    def _apply_hyperparameter(hp: HyperparameterEffect, picked: frozenset[str],
                              states: dict[str, _MethodState], rule_id: str) -> list[str]:
        changed = []
        for mid in sorted(picked & states.keys()):
            st = states[mid]
            before = st.hyperparameters.get(hp.name)
            if before is None:
                continue
            if hp.set is not None:
                after = hp.set
            elif hp.max is not None:
                after = min(before, hp.max)
            elif hp.min is not None:
                after = max(before, hp.min)
            else:  # raise_min: the lower bound of a [low, high] range
                after = [max(before[0], hp.raise_min), *before[1:]]
            if after != before:
                if st.hyperparameters is st.method.hyperparameters:
                    st.hyperparameters = dict(st.hyperparameters)
                st.hyperparameters[hp.name] = after
                st.changes.append(HyperparameterChange(name=hp.name, before=before, after=after,
                                                       rule=rule_id))
                changed.append(mid)
        return changed

    def _method_output(self, rank: int, st: _MethodState, facts: dict[str, Any],
                       use_extra: dict[str, str], avoid: dict[str, tuple[str, str]]
                       ) -> MethodRecommendation:
        m = st.method
        table = self.kb.alignment
        cell = table.cells[m.family][facts["table3"]]
        rating = cell.per_task.get(facts["task"], cell.rating)
        wanted = list(dict.fromkeys([*m.augmentations, *sorted(use_extra)]))
        rationale = [m.summary]
        column_label = table.columns[facts["table3"]]["label"]
        why = f" ({cell.why})" if cell.why else ""
        rationale.append(f"Table 3: {table.families[m.family]['label']} is {rating} for "
                         f"{column_label}{why}.")
        rationale += [text for _, text, _ in st.raised_by]
        rationale += [f"Ranked lower: {text}" for _, text in st.lowered_by]
        refs: list[RefId] = [*m.references, *cell.refs]
        for _, _, rule_refs in st.raised_by:
            refs.extend(rule_refs)
        return MethodRecommendation(
            rank=rank,
            id=m.id,
            name=m.name,
            family=m.family,
            granularity=m.granularity,
            score=round(st.score, 3),
            alignment=Alignment(rating=rating, column=facts["table3"],
                                family_label=table.families[m.family]["label"],
                                sections=cell.sections, why=cell.why),
            hyperparameters=st.hyperparameters,
            hyperparameter_changes=st.changes,
            augmentations=Augmentations(
                use=[a for a in wanted if a not in avoid],
                avoid=[AvoidedAugmentation(name=a, rule=avoid[a][0], reason=avoid[a][1])
                       for a in wanted if a in avoid],
            ),
            data_needs=list(m.needs),
            rationale=rationale,
            evidence=self.evidence(refs),
        )


@cache
def default_engine() -> Engine:
    return Engine(load_knowledge())


def engine_from(root: Path) -> Engine:
    return Engine(load_knowledge(root))
