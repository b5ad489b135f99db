"""Evaluate the knowledge base against a task profile.

The engine has no domain logic of its own: eligibility comes from each method's declared
needs, the base score from Table 3, and every adjustment from a rule in rules/tables/.
Scores are sums, ties break on method id, so the same profile always gives the same answer.

Why it is built the way it is: a profile reaches the ranked methods, trace, rule warnings
and augmentations only through its *signature* — which methods are eligible, which rules
fire, the task, the Table 3 column and top_k. Sixty thousand random profiles share about
five thousand signatures, so that part is computed once per signature as plain JSON-ready
data, serialised by pydantic-core and memoised. What belongs to one request (the resolved
profile, assumptions, input warnings, how the label regime was derived) is added per call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from .knowledge import (
    HyperparameterEffect,
    Knowledge,
    LoadedRule,
    Measurement,
    Method,
    RefId,
    Rule,
    load_knowledge,
)
from .profile import TaskProfile, facts_of, resolve_dicts
from .recommendation import EngineInfo, FinetuneDefaults, Recommendation

# Serialised outcomes kept per engine; a default answer is about 17 KB. Sixty thousand
# random profiles have about 5,300 signatures (~90 MB): 64 MB missed 5.8 % of steady-state
# requests, 128 MB misses only the 2 % that are new signatures (bench/recommend.py).
MEMO_BYTES = 128 * 1024 * 1024


def short_authors(authors: str) -> str:
    """'W. Bai, C. Chen, and G. Tarroni' -> 'Bai et al.'; keeps a single author whole."""
    first = authors.split(",")[0].split(" and ")[0].strip()
    surname = first.split()[-1] if first else authors
    several = "," in authors or " and " in authors
    return f"{surname} et al." if several else surname


@dataclass
class _MethodState:
    method: Method
    hyperparameters: dict[str, Any]
    score: float = 0.0
    changes: list[dict[str, Any]] = field(default_factory=list)
    raised_by: list[LoadedRule] = field(default_factory=list)
    lowered_by: list[LoadedRule] = field(default_factory=list)


@dataclass(frozen=True)
class _Eligibility:
    """Which catalog methods can apply to a (dims, modality, anatomy, needs met) key."""

    eligible: tuple[Method, ...]
    excluded_json: bytes

    @property
    def size(self) -> int:
        return len(self.excluded_json) + 8 * len(self.eligible)


@dataclass(frozen=True)
class _Decided:
    """Which needs a profile meets and which rules fire: fixed by the condition facts."""

    needs_met: tuple[str, ...]
    fired: tuple[int, ...]

    @property
    def size(self) -> int:
        return 64 + 8 * (len(self.needs_met) + len(self.fired))


@dataclass(frozen=True)
class _Outcome:
    """The part of an answer its signature fixes, already serialised."""

    recommendations_json: bytes
    ranked: tuple[tuple[str, int, str], ...]  # (method id, rank, family), for zoo matching
    rule_warnings: tuple[dict[str, Any], ...]
    augmentations_json: bytes
    notes_json: bytes
    trace_json: bytes

    @property
    def size(self) -> int:
        return (len(self.recommendations_json) + len(self.augmentations_json)
                + len(self.notes_json) + len(self.trace_json) + 512 * len(self.rule_warnings))


@dataclass(frozen=True)
class Evaluation:
    """A recommendation as JSON (exactly `Recommendation`'s schema) plus the few facts that
    matching zoo encoders needs, so callers need not parse the JSON back.

    The JSON is kept as the pieces of one object without its closing brace, so a caller
    can append members (the API adds `encoders`) with a single copy of ~17 KB."""

    parts: tuple[bytes, ...]
    profile: dict[str, Any]
    ranked: tuple[tuple[str, int, str], ...]

    @property
    def json(self) -> bytes:
        return self.with_members()

    def with_members(self, *members: bytes) -> bytes:
        """The JSON object with extra members, each given as b',"name":value'."""
        return b"".join((*self.parts, *members, b"}"))


@dataclass(frozen=True)
class _PreparedEffect:
    """An effect with everything that does not depend on the request worked out at load."""

    kind: str
    picked: frozenset[str]
    detail: str
    add: float = 0.0
    hyperparameter: HyperparameterEffect | None = None
    use: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    warning: dict[str, Any] | None = None
    note: str | None = None


class _Memo:
    """A thread-safe LRU bounded by the bytes its values hold (each has `.size`)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Any:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self.bytes += value.size
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self.bytes -= old.size

    def __len__(self) -> int:
        return len(self._items)


class Engine:
    def __init__(self, knowledge: Knowledge, memo_bytes: int = MEMO_BYTES,
                 pretrainable: frozenset[str] | None = None):
        self.kb = knowledge
        # Which methods can be pretrained here: given, or the installed zoo's (None: unknown).
        self.pretrainable = pretrainable if pretrainable is not None else installed_objectives()
        # Studies the review uses against a method for a task (stance `cautions`).
        self._study_cautions: dict[tuple[str, str], list[RefId]] = {}
        for row in knowledge.studies:
            if row.stance == "cautions":
                for task in row.tasks:
                    for mid in row.methods:
                        self._study_cautions.setdefault((mid, task), []).append(row.ref)
        self._evidence = {
            rid: {"id": r.id, "authors": short_authors(r.authors), "year": r.year,
                  "source": "review"}
            for rid, r in knowledge.references.items()
        }
        self._support = {
            mid: sum(isinstance(r, int) for r in m.references)
            for mid, m in knowledge.methods.items()
        }
        # The project's own measurements, as evidence entries beside the review's.
        self._project = {i: [project_evidence(lr.rule, m) for m in lr.rule.measurements]
                         for i, lr in enumerate(knowledge.rules) if lr.rule.measurements}
        self._info = EngineInfo(
            knowledge_fingerprint=knowledge.fingerprint,
            methods_in_catalog=len(knowledge.methods),
            rules_loaded=len(knowledge.rules),
        )
        self._info_json = to_json(self._info)
        self._alignment_note_json = to_json(knowledge.alignment.note)
        self._effects = [self._prepare(lr) for lr in knowledge.rules]
        # LabelAdvice serialised without its opening `regime`, `derived_from` and
        # `regime_rule`, which are added per call: b',"rule":...}', per (regime, task).
        self._advice_tail: dict[tuple[str, str], bytes] = {}
        tasks = knowledge.vocabulary.raw["tasks"]
        for regime, advice in knowledge.regime_advice.items():
            for task in tasks:
                suffix, a = advice.for_task(task)
                self._advice_tail[(regime, task)] = b"," + to_json({
                    "rule": f"advice.{regime}{suffix}",
                    "expected_benefit": a["expected_benefit"], "evaluation": a["evaluation"],
                    "adaptation": a["adaptation"], "sections": a["sections"],
                    "evidence": self.evidence(a["refs"])})[1:]
        # Rules indexed by the `fact eq value` their condition starts with (most study.*
        # rules need one modality and one task), so a profile tests only the rules that can
        # fire for it; the rest are tested always. Order is kept: indices are merged sorted.
        self._unguarded: list[int] = []
        self._guarded: dict[str, dict[Any, list[int]]] = {}
        for i, lr in enumerate(knowledge.rules):
            guard = _guard(lr.rule.when)
            if guard is None:
                self._unguarded.append(i)
            else:
                self._guarded.setdefault(guard[0], {}).setdefault(guard[1], []).append(i)
        self._eligibility = _Memo(memo_bytes // 16)
        self._decided = _Memo(memo_bytes // 16)
        self._static: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.memo = _Memo(memo_bytes)

    @property
    def info(self) -> EngineInfo:
        return self._info

    def evidence(self, refs: list[RefId]) -> list[dict[str, Any]]:
        """Short citations (id, authors, year), first mention first, no repeats."""
        return [self._evidence[r] for r in dict.fromkeys(refs)]

    def recommend(self, profile: TaskProfile) -> Recommendation:
        return Recommendation.model_validate_json(self.evaluate(profile).json)

    def _candidates(self, facts: dict[str, Any]) -> list[int]:
        """Indices of the rules that can fire for these facts, in rule order."""
        found = [i for fact, by_value in self._guarded.items()
                 for i in by_value.get(facts.get(fact), ())]
        return sorted(self._unguarded + found) if found else self._unguarded

    def evaluate(self, profile: TaskProfile) -> Evaluation:
        """The recommendation for a profile, serialised; raises ProfileConflict."""
        kb = self.kb
        resolved, assumptions, input_warnings = resolve_dicts(profile, kb.vocabulary)
        facts = facts_of(resolved)
        decided_key = tuple(map(facts.get, kb.condition_facts))
        decided = self._decided.get(decided_key)
        if decided is None:
            decided = _Decided(
                tuple(name for name, (pred, _) in kb.needs.items() if pred(facts)),
                tuple(i for i in self._candidates(facts) if kb.rules[i].predicate(facts)))
            self._decided.put(decided_key, decided)
        needs_met, fired = decided.needs_met, decided.fired
        elig_key = (facts["dims"], facts["modality"], facts["anatomy"], needs_met)
        eligibility = self._eligibility.get(elig_key)
        if eligibility is None:
            eligibility = self._eligible(facts, needs_met)
            self._eligibility.put(elig_key, eligibility)
        key = (elig_key, fired, facts["task"], facts["table3"], profile.top_k)
        outcome = self.memo.get(key)
        if outcome is None:
            outcome = self._outcome(facts, eligibility, fired, profile.top_k)
            self.memo.put(key, outcome)

        warnings = [{"code": w["code"], "severity": "low", "message": w["message"],
                     "rule": "input", "evidence": []} for w in input_warnings]
        warnings.extend(outcome.rule_warnings)
        regime = resolved["label_regime"]
        parts = (
            b'{"profile":', to_json(resolved),
            b',"assumptions":', to_json(assumptions),
            b',"recommendations":', outcome.recommendations_json,
            b',"excluded":', eligibility.excluded_json,
            b',"warnings":', to_json(warnings),
            b',"label_advice":{"regime":', to_json(regime),
            b',"derived_from":', to_json(resolved["label_regime_source"]),
            b',"regime_rule":', to_json(resolved["label_regime_rule"]),
            self._advice_tail[(regime, resolved["task"])],
            b',"augmentations":', outcome.augmentations_json,
            b',"notes":', outcome.notes_json,
            b',"alignment_note":', self._alignment_note_json,
            b',"trace":', outcome.trace_json,
            b',"engine":', self._info_json,
        )
        return Evaluation(parts=parts, profile=resolved, ranked=outcome.ranked)

    def finetune_defaults(self, profile: TaskProfile) -> FinetuneDefaults:
        """Fine-tuning settings for a profile, each with the entry that set it; raises
        ProfileConflict like `evaluate`."""
        resolved, _, _ = resolve_dicts(profile, self.kb.vocabulary)
        facts = facts_of(resolved)
        values: dict[str, dict[str, Any]] = {}
        for loaded in self.kb.finetune:
            if loaded.predicate is not None and not loaded.predicate(facts):
                continue
            entry = loaded.entry
            for name, value in entry.set:
                if value is not None:
                    values[name] = {"value": value, "rule": entry.id, "sections": entry.sections,
                                    "evidence": self.evidence(entry.refs),
                                    "source": entry.source}
        return FinetuneDefaults.model_validate({
            "task": resolved["task"], "label_regime": resolved["label_regime"],
            "label_regime_source": resolved["label_regime_source"],
            "label_regime_rule": resolved["label_regime_rule"], **values})

    # -- computed once per eligibility key or signature -----------------------------------

    def _eligible(self, facts: dict[str, Any], needs_met: tuple[str, ...]) -> _Eligibility:
        eligible, excluded = [], []
        vocab = self.kb.vocabulary
        frames = vocab.raw["dimensionalities"][facts["dims"]].get("frames")
        modality = vocab.modality(facts["modality"])
        required_tags = set(modality.get("method_tags") or ())
        for m in self.kb.methods.values():
            reasons = []
            if facts["dims"] not in m.dims and frames not in m.dims:
                reasons.append(f"supports {', '.join(m.dims)}, not {facts['dims']}")
            if m.modalities and facts["modality"] not in m.modalities:
                reasons.append(f"specific to {', '.join(m.modalities)}")
            if required_tags and not required_tags & set(m.tags):
                reasons.append(f"{facts['modality']} needs a method for "
                               f"{' or '.join(sorted(required_tags))} data")
            if m.anatomies and facts["anatomy"] not in m.anatomies:
                reasons.append(f"designed for {', '.join(m.anatomies)} anatomy")
            reasons += [self.kb.needs[n][1] for n in m.needs if n not in needs_met]
            if reasons:
                excluded.append({"id": m.id, "reasons": reasons})
            else:
                eligible.append(m)
        excluded.sort(key=lambda e: e["id"])
        return _Eligibility(eligible=tuple(eligible), excluded_json=to_json(excluded))

    def _prepare(self, lr: LoadedRule) -> list[_PreparedEffect]:
        kb, rule, out = self.kb, lr.rule, []
        for effect, picked in zip(rule.effects, lr.selected, strict=True):
            if effect.score:
                out.append(_PreparedEffect("score", picked, f"{effect.score.add:+g}",
                                           add=effect.score.add))
            elif effect.hyperparameter:
                hp = effect.hyperparameter
                op = next(k for k in ("set", "max", "min", "raise_min")
                          if getattr(hp, k) is not None)
                out.append(_PreparedEffect("hyperparameter", picked,
                                           f"{hp.name} {op} {getattr(hp, op)}",
                                           hyperparameter=hp))
            elif effect.augment:
                a = effect.augment
                out.append(_PreparedEffect(
                    "augment", picked, f"use {a.use} avoid {a.avoid}",
                    use=tuple(kb.expand_augmentations(a.use)),
                    avoid=tuple(kb.expand_augmentations(a.avoid))))
            elif effect.warn:
                w = effect.warn
                out.append(_PreparedEffect("warn", picked, w.code, warning={
                    "code": w.code, "severity": w.severity, "message": w.message,
                    "rule": rule.id, "evidence": self.evidence(rule.refs)}))
            else:
                out.append(_PreparedEffect("note", picked, effect.note or "", note=effect.note))
        return out

    def _outcome(self, facts: dict[str, Any], eligibility: _Eligibility,
                 fired: tuple[int, ...], top_k: int) -> _Outcome:
        kb = self.kb
        states = {m.id: _MethodState(method=m, hyperparameters=m.hyperparameters)
                  for m in eligibility.eligible}
        trace = self._apply_table3(facts["task"], facts["table3"], states)
        use_extra: dict[str, str] = {}
        avoid: dict[str, tuple[str, str]] = {}
        warnings: list[dict[str, Any]] = []
        notes: list[dict[str, Any]] = []
        measured: dict[str, list[dict[str, Any]]] = {}
        for i in fired:
            lr = kb.rules[i]
            rule = lr.rule
            effects = []
            for pe in self._effects[i]:
                if pe.kind == "score":
                    hit = sorted(pe.picked & states.keys())
                    for mid in hit:
                        st = states[mid]
                        st.score += pe.add
                        (st.raised_by if pe.add > 0 else st.lowered_by).append(lr)
                    effects.append({"kind": "score", "detail": pe.detail, "methods": hit})
                elif pe.kind == "hyperparameter":
                    changed = _apply_hyperparameter(pe.hyperparameter, pe.picked, states,
                                                    rule.id)
                    effects.append({"kind": "hyperparameter", "detail": pe.detail,
                                    "methods": changed})
                elif pe.kind == "augment":
                    for name in pe.use:
                        use_extra.setdefault(name, rule.id)
                    for name in pe.avoid:
                        avoid.setdefault(name, (rule.id, rule.description))
                    effects.append({"kind": "augment", "detail": pe.detail, "methods": []})
                elif pe.kind == "warn":
                    warnings.append(pe.warning)
                    effects.append({"kind": "warn", "detail": pe.detail, "methods": []})
                else:
                    note = {"text": pe.note, "rule": rule.id, "sections": rule.sections}
                    if i in self._project:
                        note["measurements"] = self._project[i]
                        for e in self._project[i]:
                            measured.setdefault(e["method"], []).append(e)
                    notes.append(note)
                    effects.append({"kind": "note", "detail": pe.detail, "methods": []})
            trace.append({"rule": rule.id, "file": lr.file, "effects": effects})

        # Ties break on how many reviewed studies back the method, then on its id.
        ranked = sorted(states.values(), key=lambda s: (-round(s.score, 6),
                                                        -self._support[s.method.id], s.method.id))
        trace.extend(self._tie_breaks(ranked, top_k))
        trace.extend(self._run_checks(ranked, warnings, avoid, notes))
        recs = [self._method_output(rank, st, facts, use_extra, avoid,
                                    measured.get(st.method.id, ()))
                for rank, st in enumerate(ranked[:top_k], start=1)]
        used = sorted(n for n in use_extra if n not in avoid)
        augmentations = {
            "use": used,
            "avoid": [{"name": n, "rule": r, "reason": why}
                      for n, (r, why) in sorted(avoid.items())],
            "sources": {n: use_extra[n] for n in used},
        }
        return _Outcome(
            recommendations_json=to_json(recs),
            ranked=tuple((r["id"], r["rank"], r["family"]) for r in recs),
            rule_warnings=tuple(warnings),
            augmentations_json=to_json(augmentations),
            notes_json=to_json(notes),
            trace_json=to_json(trace),
        )

    def _run_checks(self, ranked: list[_MethodState], warnings: list[dict[str, Any]],
                    avoid: dict[str, tuple[str, str]], notes: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
        """Consistency checks (tables/consistency.yaml) over the answer built so far."""
        trace = []
        codes = {w["code"] for w in warnings}
        for check in self.kb.checks:
            c = check.when
            first = [st.method for st in ranked[:c.k]]
            if ((c.warning and c.warning not in codes)
                    or (c.avoided and c.avoided not in avoid)
                    or (c.returned_tag and not any(c.returned_tag in m.tags for m in first))
                    or (c.returned_family and not any(m.family == c.returned_family
                                                      for m in first))):
                continue
            effects = []
            for e in check.effects:
                if e.augment:
                    for name in self.kb.expand_augmentations(e.augment.avoid):
                        avoid.setdefault(name, (check.id, check.description))
                    effects.append({"kind": "augment", "detail": f"avoid {e.augment.avoid}"})
                elif e.warn:
                    warnings.append({"code": e.warn.code, "severity": e.warn.severity,
                                     "message": e.warn.message, "rule": check.id,
                                     "evidence": self.evidence(check.refs)})
                    effects.append({"kind": "warn", "detail": e.warn.code})
                else:
                    notes.append({"text": e.note, "rule": check.id,
                                  "sections": check.sections})
                    effects.append({"kind": "note", "detail": e.note or ""})
            trace.append({"rule": check.id, "file": "tables/consistency.yaml",
                          "effects": effects})
        return trace

    def _tie_breaks(self, ranked: list[_MethodState], top_k: int) -> list[dict[str, Any]]:
        """Trace entries for every group of equal scores that reaches the returned ranks."""
        out: list[dict[str, Any]] = []
        i = 0
        while i < min(top_k, len(ranked)):
            score = round(ranked[i].score, 6)
            j = i
            while j + 1 < len(ranked) and round(ranked[j + 1].score, 6) == score:
                j += 1
            if j > i:
                group = ranked[i:j + 1]
                order = ", ".join(f"{st.method.id} ({self._support[st.method.id]})"
                                  for st in group)
                out.append({"rule": "engine.tie_break", "file": "rules/engine.py", "effects": [
                    {"kind": "tie_break",
                     "detail": f"score {score:g} shared by ranks {i + 1}-{j + 1}: ordered by "
                               f"how many reviewed studies the method cites, then by id: {order}",
                     "methods": [st.method.id for st in group]}]})
            i = j + 1
        return out

    def _apply_table3(self, task: str, column: str,
                      states: dict[str, _MethodState]) -> list[dict[str, Any]]:
        table = self.kb.alignment
        by_family: dict[str, list[str]] = {}
        for mid, st in states.items():
            by_family.setdefault(st.method.family, []).append(mid)
        trace = []
        for family in sorted(by_family):
            cell = table.cells[family][column]
            rating = cell.per_task.get(task, cell.rating)
            points = table.points[rating]
            for mid in by_family[family]:
                states[mid].score += points
            trace.append({"rule": f"table3.{family}.{column}", "file": "tables/alignment.yaml",
                          "effects": [{"kind": "score", "detail": f"{rating} {points:+g}",
                                       "methods": sorted(by_family[family])}]})
        return trace

    def _method_output(self, rank: int, st: _MethodState, facts: dict[str, Any],
                       use_extra: dict[str, str], avoid: dict[str, tuple[str, str]],
                       measured: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        m = st.method
        static = self._method_static(m, facts["table3"], facts["task"])
        own = f"catalog.{m.id}"
        sources = {a: own for a in m.augmentations}
        for name in sorted(use_extra):
            sources.setdefault(name, use_extra[name])
        rationale = [*static["rationale"],
                     *({"text": lr.rule.rationale, "rule": lr.rule.id} for lr in st.raised_by),
                     *({"text": f"Ranked lower: {lr.rule.rationale}", "rule": lr.rule.id}
                       for lr in st.lowered_by)]
        supports: list[RefId] = list(static["supports"])
        for lr in st.raised_by:
            supports.extend(lr.rule.refs)
        cautions: list[RefId] = list(static["cautions"])
        for lr in st.lowered_by:
            cautions.extend(lr.rule.refs)
        against = set(cautions)
        return {
            "rank": rank,
            "id": m.id,
            "name": m.name,
            "family": m.family,
            "granularity": m.granularity,
            "score": round(st.score, 3),
            "alignment": static["alignment"],
            "hyperparameters": st.hyperparameters,
            "hyperparameter_changes": st.changes,
            "augmentations": {
                "use": [a for a in sources if a not in avoid],
                "avoid": [{"name": a, "rule": avoid[a][0], "reason": avoid[a][1]}
                          for a in sources if a in avoid],
                "sources": {a: r for a, r in sources.items() if a not in avoid},
            },
            "data_needs": static["data_needs"],
            "pretrainable": static["pretrainable"],
            "literature_only": m.literature_only,
            "rationale": rationale,
            "supports": [*self.evidence([r for r in supports if r not in against]),
                         *(e for e in measured if e["verdict"] == "agrees")],
            "cautions": [*self.evidence(cautions),
                         *(e for e in measured if e["verdict"] != "agrees")],
        }

    def _method_static(self, m: Method, column: str, task: str) -> dict[str, Any]:
        """What a method's output takes from the catalog and Table 3 alone."""
        key = (m.id, column, task)
        hit = self._static.get(key)
        if hit is not None:
            return hit
        table = self.kb.alignment
        cell = table.cells[m.family][column]
        rating = cell.per_task.get(task, cell.rating)
        family_label = table.families[m.family]["label"]
        why = f" ({cell.why})" if cell.why else ""
        cell_id = f"table3.{m.family}.{column}"
        study_cautions = self._study_cautions.get((m.id, task), [])
        static = {
            "alignment": {"rating": rating, "column": column, "family_label": family_label,
                          "sections": cell.sections, "why": cell.why},
            "rationale": ({"text": m.summary, "rule": f"catalog.{m.id}"},
                          {"text": f"Table 3: {family_label} is {rating} for "
                                   f"{table.columns[column]['label']}{why}.", "rule": cell_id}),
            "supports": (*m.references, *(cell.refs if rating != "weak" else ())),
            "cautions": (*(cell.refs if rating == "weak" else ()), *study_cautions),
            "data_needs": list(m.needs),
            "pretrainable": None if self.pretrainable is None else m.id in self.pretrainable,
        }
        self._static[key] = static  # bounded: methods x columns x tasks
        return static


def _guard(when: dict[str, Any]) -> tuple[str, Any] | None:
    """The `fact eq value` a condition cannot hold without, if it starts with one."""
    leaf = when["all"][0] if "all" in when else when
    if leaf.get("op") == "eq" and isinstance(leaf.get("value"), str | int | float | bool):
        return leaf["fact"], leaf["value"]
    return None


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
            if st.hyperparameters is st.method.hyperparameters:  # copy on first write
                st.hyperparameters = dict(st.hyperparameters)
            st.hyperparameters[hp.name] = after
            st.changes.append({"name": hp.name, "before": before, "after": after,
                               "rule": rule_id})
            changed.append(mid)
    return changed


def installed_objectives() -> frozenset[str] | None:
    """The methods installed packages can pretrain, from the `taskalign.pretrainable` entry
    points (the zoo announces its objectives there, so this package never imports it);
    None when nothing is installed that can pretrain."""
    found = entry_points(group="taskalign.pretrainable")
    if not found:
        return None
    return frozenset().union(*(frozenset(ep.load()) for ep in found))


@cache
def default_engine() -> Engine:
    return Engine(load_knowledge())


def engine_from(root: Path | None = None, memo_bytes: int = MEMO_BYTES) -> Engine:
    """A new engine over a knowledge directory (the packaged one by default)."""
    return Engine(load_knowledge(root), memo_bytes=memo_bytes)


def project_evidence(rule: Rule, m: Measurement) -> dict[str, Any]:
    """A rule's measurement as an evidence entry: the card and metric it comes from, the
    figures, and whether it agrees with the review's expectation of a gain."""
    return {"id": f"project:{m.card}#{m.protocol}@{m.label_fraction:g}:{m.metric}",
            "authors": "TaskAlign seed zoo", "year": m.year,
            "source": "project", "card": f"taskalign/{m.card}", "method": m.method,
            "metric": f"{m.protocol}@{m.label_fraction:g}:{m.metric}", "value": m.value,
            "random_init": m.random_init,
            "vs_best_ci95": list(m.vs_best_ci95) if m.vs_best_ci95 else None,
            "verdict": m.verdict, "rule": rule.id}
