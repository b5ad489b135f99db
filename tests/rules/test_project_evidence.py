"""The rules cite TaskAlign's own measurements as `project` evidence (issue 14, item 4): each
figure must be the one in the shipped card it names, and the verdict must follow from the
interval, so a rebuilt card that moves a number fails here until the rule is updated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rules import TaskProfile, default_engine
from rules.knowledge import Rule

SEED = Path(__file__).resolve().parents[2] / "zoo" / "seed"
MEASURED = [lr.rule for lr in default_engine().kb.rules if lr.rule.measurement is not None]


def card_row(card: dict[str, Any], protocol: str, fraction: float, metric: str
             ) -> dict[str, Any]:
    rows = [e for e in card["evaluation"] if e["protocol"] == protocol
            and e["label_fraction"] == fraction and e["metric"] == metric
            and not e.get("test_noise")]
    assert len(rows) == 1, f"{card['name']}: {len(rows)} rows for {protocol}@{fraction}:{metric}"
    return rows[0]


def test_there_are_project_measurements() -> None:
    assert len(MEASURED) >= 4
    assert {r.measurement.card for r in MEASURED} >= {"resnet18-2d.barlow-braintumor28"}


@pytest.mark.parametrize("rule", MEASURED, ids=lambda r: r.id)
def test_measurement_matches_its_card(rule: Rule) -> None:
    m = rule.measurement
    card = json.loads((SEED / m.card / "card.json").read_text())
    assert card["pretext"]["method_id"] == m.method
    ssl = card_row(card, m.protocol, m.label_fraction, m.metric)
    base = card_row(card, f"random_init_{m.protocol}", m.label_fraction, m.metric)
    assert round(ssl["value"], 3) == round(m.value, 3)
    assert round(base["value"], 3) == round(m.random_init, 3)
    if m.vs_best_ci95 is not None:
        assert [round(x, 3) for x in ssl["difference_vs_best_ci95"]] == [
            round(x, 3) for x in m.vs_best_ci95]
    # The note a user reads carries the same figures.
    text = " ".join(e.note or "" for e in rule.effects)
    assert f"{m.value:.3f}" in text and f"{m.random_init:.3f}" in text


@pytest.mark.parametrize("rule", MEASURED, ids=lambda r: r.id)
def test_verdict_follows_from_the_interval(rule: Rule) -> None:
    m = rule.measurement
    if m.vs_best_ci95 is None:
        assert m.verdict != "agrees", "a gain needs an interval above 0"
        return
    lo, hi = m.vs_best_ci95
    expected = "agrees" if lo > 0 else "disagrees" if hi < 0 else "inconclusive"
    assert m.verdict == expected


def test_answer_cites_the_measurement_beside_the_review() -> None:
    engine = default_engine()
    rule = next(r for r in MEASURED if r.measurement.verdict == "agrees")
    m = rule.measurement
    card = json.loads((SEED / m.card / "card.json").read_text())
    dims = f"{card['spatial_dims']}d"
    rec = engine.recommend(TaskProfile(task="classification", modality=card["modality"],
                                       dimensionality=dims, label_regime="low", top_k=100))
    method = next(r for r in rec.recommendations if r.id == m.method)
    project = [e for e in method.supports if e.source == "project"]
    assert [e.rule for e in project] == [rule.id]
    assert project[0].card == f"taskalign/{m.card}" and project[0].verdict == "agrees"
    assert any(e.source == "review" for e in method.supports)
    note = next(n for n in rec.notes if n.rule == rule.id)
    assert note.measurement is not None and note.measurement.metric.endswith(m.metric)


def test_a_measurement_that_does_not_agree_is_a_caution() -> None:
    engine = default_engine()
    rule = next((r for r in MEASURED if r.measurement.verdict != "agrees"
                 and r.measurement.protocol != "fine_tune"), None)
    if rule is None:
        pytest.skip("every classification measurement agrees with the review")
    m = rule.measurement
    card = json.loads((SEED / m.card / "card.json").read_text())
    dims = f"{card['spatial_dims']}d"
    rec = engine.recommend(TaskProfile(task="classification", modality=card["modality"],
                                       dimensionality=dims, label_regime="low", top_k=100))
    method = next(r for r in rec.recommendations if r.id == m.method)
    assert rule.id in {e.rule for e in method.cautions if e.source == "project"}
    assert rule.id not in {e.rule for e in method.supports}
