"""Scenario tests: the review's guidance, case by case (tests/rules/scenarios.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rules import Recommendation, TaskProfile, default_engine

SCENARIOS = yaml.safe_load((Path(__file__).parent / "scenarios.yaml").read_text())


def _ranks(rec: Recommendation) -> dict[str, int]:
    return {r.id: r.rank for r in rec.recommendations}


def check(rec: Recommendation, expect: dict[str, Any]) -> None:
    recs = rec.recommendations
    ranks = _ranks(rec)
    top = [r.id for r in recs]
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
    for mid, params in expect.get("hyperparameters", {}).items():
        method = next((r for r in recs if r.id == mid), None)
        assert method is not None, f"{mid} not ranked"
        for name, cond in params.items():
            value = method.hyperparameters[name]
            if "eq" in cond:
                assert value == cond["eq"], f"{mid}.{name}={value}"
            if "le" in cond:
                assert value <= cond["le"], f"{mid}.{name}={value}"
            if "ge" in cond:
                assert value >= cond["ge"], f"{mid}.{name}={value}"
            if "min_first" in cond:
                assert value[0] >= cond["min_first"], f"{mid}.{name}={value}"
    for code in expect.get("warnings", []):
        assert code in codes, f"missing warning {code}; got {sorted(codes)}"
    for code in expect.get("no_warnings", []):
        assert code not in codes, f"unexpected warning {code}"
    if "regime" in expect:
        assert rec.label_advice.regime == expect["regime"]
    use = set(rec.augmentations.use)
    avoid = {a.name for a in rec.augmentations.avoid}
    for name in expect.get("augment_use", []):
        assert name in use and name not in avoid, f"{name} should be advised; use={sorted(use)}"
    for name in expect.get("augment_avoid", []):
        assert name in avoid, f"{name} should be avoided; avoid={sorted(avoid)}"
    for text in expect.get("notes_contain", []):
        assert any(text in n.text for n in rec.notes), rec.notes


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["id"] for s in SCENARIOS])
def test_scenario(scenario: dict[str, Any]) -> None:
    rec = default_engine().recommend(TaskProfile.model_validate(scenario["profile"]))
    check(rec, scenario["expect"])


def test_scenarios_cover_tasks_and_modalities() -> None:
    profiles = [TaskProfile.model_validate(s["profile"]) for s in SCENARIOS]
    assert len(SCENARIOS) >= 40
    assert {p.task for p in profiles} == {"classification", "segmentation", "detection",
                                          "anomaly_detection", "reconstruction", "regression"}
    assert len({p.modality for p in profiles}) >= 10
    assert all(s.get("source") for s in SCENARIOS)
