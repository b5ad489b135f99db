"""Scenario tests: the review's guidance, case by case (tests/rules/scenarios.yaml).

A scenario with `xfail: "reason"` states what the review asks for but the engine does not
(yet) produce; it runs as a strict xfail, so it fails the suite once the engine is fixed
and the key must be removed. Such scenarios sit at the end of the file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rules import Recommendation, TaskProfile, default_engine
from rules.vocabulary import load_vocabulary

SCENARIOS: list[dict[str, Any]] = yaml.safe_load(
    (Path(__file__).parent / "scenarios.yaml").read_text())

# Masked-modelling methods checked by the `masked_modelling` key unless it names others.
MASKED_MODELLING = ["mae", "simmim"]
# A review section (3.3, 4.2.1, 5.5.2, 7, ...) or one of its tables, outside [references].
SECTION = re.compile(r"(?<![\w.])(?:[3-9](?:\.\d+){1,2}|[3-9](?=[\s:;,)])|Table [1-4])(?!\w)")
REFERENCES = re.compile(r"\[[^\]]*\]")


def _ranks(rec: Recommendation) -> dict[str, int]:
    return {r.id: r.rank for r in rec.recommendations}


def _compare(value: Any, cond: dict[str, Any], what: str) -> None:
    if "eq" in cond:
        assert value == cond["eq"], f"{what}={value}, expected {cond['eq']}"
    if "le" in cond:
        assert value <= cond["le"], f"{what}={value}, expected <= {cond['le']}"
    if "lt" in cond:
        assert value < cond["lt"], f"{what}={value}, expected < {cond['lt']}"
    if "ge" in cond:
        assert value >= cond["ge"], f"{what}={value}, expected >= {cond['ge']}"
    if "min_first" in cond:
        assert value[0] >= cond["min_first"], f"{what}={value}"


def _resolved(rec: Recommendation, dotted: str) -> Any:
    value: Any = rec.profile.model_dump()
    for part in dotted.split("."):
        value = value[part]
    return value


def check(rec: Recommendation, expect: dict[str, Any],
          profile: TaskProfile | None = None) -> None:
    recs = rec.recommendations
    ranks = _ranks(rec)
    top = [r.id for r in recs]
    by_id = {r.id: r for r in recs}
    excluded = {e.id for e in rec.excluded}
    codes = {w.code for w in rec.warnings}
    if "top1_in" in expect:
        assert top[0] in expect["top1_in"], f"top method {top[0]}; ranking {top[:6]}"
    if "top1_family_in" in expect:
        assert recs[0].family in expect["top1_family_in"], f"top {top[0]} is {recs[0].family}"
    if "top_k" in expect:
        k, first = expect["top_k"]["k"], top[: expect["top_k"]["k"]]
        if "any" in expect["top_k"]:
            assert set(first) & set(expect["top_k"]["any"]), f"none of {expect['top_k']['any']} "\
                f"in top {k}: {first}"
        for mid in expect["top_k"].get("all", []):
            assert mid in first, f"{mid} not in top {k}: {first}"
    if "not_top_k" in expect:
        first = top[: expect["not_top_k"]["k"]]
        assert not set(first) & set(expect["not_top_k"]["methods"]), first
    for a, b in expect.get("before", []):
        assert a in ranks and b in ranks, f"{a} or {b} not ranked (excluded: {sorted(excluded)})"
        assert ranks[a] < ranks[b], f"{a} (#{ranks[a]}) should rank above {b} (#{ranks[b]})"
    for mid in expect.get("excluded", []):
        assert mid in excluded and mid not in ranks, f"{mid} should be excluded"
    for mid in expect.get("eligible", []):
        assert mid in ranks, f"{mid} should be ranked; excluded: " + str(
            next((e.reasons for e in rec.excluded if e.id == mid), "not returned"))
    for mid, params in expect.get("hyperparameters", {}).items():
        method = by_id.get(mid)
        assert method is not None, f"{mid} not ranked"
        for name, cond in params.items():
            _compare(method.hyperparameters[name], cond, f"{mid}.{name}")
    if "masked_modelling" in expect:
        spec = expect["masked_modelling"]
        names = spec.get("methods", MASKED_MODELLING)
        present = [m for m in names if m in by_id]
        assert present, f"none of {names} ranked; excluded: {sorted(excluded & set(names))}"
        for mid in present:
            _compare(by_id[mid].hyperparameters["mask_ratio"], {"le": spec["max"]},
                     f"{mid}.mask_ratio")
    for code in expect.get("warnings", []):
        assert code in codes, f"missing warning {code}; got {sorted(codes)}"
    for code in expect.get("no_warnings", []):
        assert code not in codes, f"unexpected warning {code}"
    warning_rules = {w.rule for w in rec.warnings}
    for rule in expect.get("warnings_rule", []):
        assert rule in warning_rules, f"no warning from {rule}; got {sorted(warning_rules)}"
    if "regime" in expect:
        assert rec.label_advice.regime == expect["regime"], rec.label_advice.regime
    if "regime_in" in expect:
        assert rec.label_advice.regime in expect["regime_in"], \
            f"regime {rec.label_advice.regime} ({rec.label_advice.derived_from})"
    if "advice_rule" in expect:
        assert rec.label_advice.rule == expect["advice_rule"], rec.label_advice.rule
    advice = f"{rec.label_advice.adaptation}\n{rec.label_advice.evaluation}".lower()
    for text in expect.get("advice_contains", []):
        assert text.lower() in advice, f"{text!r} not in label advice: {advice}"
    use = set(rec.augmentations.use)
    avoid = {a.name for a in rec.augmentations.avoid}
    for name in expect.get("augment_use", []):
        assert name in use and name not in avoid, f"{name} should be advised; use={sorted(use)}"
    for name in expect.get("augment_avoid", []):
        assert name in avoid, f"{name} should be avoided; avoid={sorted(avoid)}"
    for text in expect.get("notes_contain", []):
        assert any(text in n.text for n in rec.notes), rec.notes
    note_rules = {n.rule for n in rec.notes}
    for rule in expect.get("notes_rule", []):
        assert rule in note_rules, f"no note from {rule}; got {sorted(note_rules)}"
    for rule in expect.get("no_notes_rule", []):
        assert rule not in note_rules, f"unexpected note from {rule}"
    for key, attr in (("supports_include", "supports"), ("cautions_include", "cautions")):
        for mid, refs in expect.get(key, {}).items():
            method = by_id.get(mid)
            assert method is not None, f"{mid} not ranked"
            have = {e.id for e in getattr(method, attr)}
            missing = [r for r in refs if r not in have]
            assert not missing, f"{mid}.{attr} lacks {missing}; has {sorted(map(str, have))}"
    for mid, refs in expect.get("cautions_exclude", {}).items():
        method = by_id.get(mid)
        assert method is not None, f"{mid} not ranked"
        wrong = [e.id for e in method.cautions if e.id in refs]
        assert not wrong, f"{mid}.cautions cite {wrong}"
    for dotted, value in expect.get("resolved", {}).items():
        assert _resolved(rec, dotted) == value, f"{dotted}={_resolved(rec, dotted)}"
    if "finetune" in expect:
        assert profile is not None
        defaults = default_engine().finetune_defaults(profile)
        for name, value in expect["finetune"].items():
            got = getattr(defaults, name).value
            assert got == value, f"finetune {name}={got} ({getattr(defaults, name).rule})"


def _param(s: dict[str, Any]) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=s["xfail"])] if s.get("xfail") else []
    return pytest.param(s, id=s["id"], marks=marks)


@pytest.mark.parametrize("scenario", [_param(s) for s in SCENARIOS])
def test_scenario(scenario: dict[str, Any]) -> None:
    profile = TaskProfile.model_validate(scenario["profile"])
    check(default_engine().recommend(profile), scenario["expect"], profile)


def test_scenarios_cover_tasks_and_modalities() -> None:
    profiles = [TaskProfile.model_validate(s["profile"]) for s in SCENARIOS]
    resolved = [default_engine().recommend(p).profile for p in profiles]
    assert sum(not s.get("xfail") for s in SCENARIOS) >= 85, "at least 85 passing scenarios"
    assert len({s["id"] for s in SCENARIOS}) == len(SCENARIOS), "duplicate scenario ids"
    assert {r.task for r in resolved} == {"classification", "segmentation", "detection",
                                          "anomaly_detection", "reconstruction", "regression"}
    missing = set(load_vocabulary().allowed("modality")) - {r.modality for r in resolved}
    assert not missing, f"modalities without a scenario: {sorted(missing)}"
    unsourced = [s["id"] for s in SCENARIOS
                 if not SECTION.search(REFERENCES.sub("", s.get("source") or ""))]
    assert not unsourced, f"scenarios whose source names no review section: {unsourced}"


def test_xfail_scenarios_last_and_explained() -> None:
    flags = [bool(s.get("xfail")) for s in SCENARIOS]
    assert flags == sorted(flags), "xfail scenarios belong at the end of scenarios.yaml"
    assert all(isinstance(s["xfail"], str) and s["xfail"].strip()
               for s in SCENARIOS if "xfail" in s)
