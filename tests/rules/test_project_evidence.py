"""The rules cite TaskAlign's own measurements as `project` evidence (issue 14, item 4): each
figure must be the one in the shipped card it names, and the verdict must follow from the
interval, so a rebuilt card that moves a number fails here until the rule is updated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rules import TaskProfile, default_engine
from rules.knowledge import Measurement, Rule

SEED = Path(__file__).resolve().parents[2] / "zoo" / "seed"
MEASURED = [(lr.rule, m) for lr in default_engine().kb.rules for m in lr.rule.measurements]


def card_row(card: dict[str, Any], protocol: str, fraction: float, metric: str
             ) -> dict[str, Any]:
    rows = [e for e in card["evaluation"] if e["protocol"] == protocol
            and e["label_fraction"] == fraction and e["metric"] == metric
            and not e.get("test_noise")]
    assert len(rows) == 1, f"{card['name']}: {len(rows)} rows for {protocol}@{fraction}:{metric}"
    return rows[0]


def test_there_are_project_measurements() -> None:
    assert len(MEASURED) >= 4
    assert {m.card for _, m in MEASURED} >= {"resnet18-2d.barlow-braintumor28"}


def ids(case: tuple[Rule, Measurement]) -> str:
    return f"{case[0].id}:{case[1].protocol}@{case[1].label_fraction:g}"


@pytest.mark.parametrize("case", MEASURED, ids=ids)
def test_measurement_matches_its_card(case: tuple[Rule, Measurement]) -> None:
    rule, m = case
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


@pytest.mark.parametrize("case", MEASURED, ids=ids)
def test_verdict_follows_from_the_interval(case: tuple[Rule, Measurement]) -> None:
    _, m = case
    if m.vs_best_ci95 is None:
        assert m.verdict != "agrees", "a gain needs an interval above 0"
        return
    lo, hi = m.vs_best_ci95
    expected = "agrees" if lo > 0 else "disagrees" if hi < 0 else "inconclusive"
    assert m.verdict == expected


def test_answer_cites_the_measurement_beside_the_review() -> None:
    engine = default_engine()
    rule, m = next((r, m) for r, m in MEASURED if m.verdict == "agrees")
    card = json.loads((SEED / m.card / "card.json").read_text())
    dims = f"{card['spatial_dims']}d"
    rec = engine.recommend(TaskProfile(task="classification", modality=card["modality"],
                                       dimensionality=dims, label_regime="low", top_k=100))
    method = next(r for r in rec.recommendations if r.id == m.method)
    project = [e for e in method.supports if e.source == "project" and e.rule == rule.id]
    assert project and project[0].card == f"taskalign/{m.card}"
    assert all(e.verdict == "agrees" for e in method.supports if e.source == "project")
    assert any(e.source == "review" for e in method.supports)
    note = next(n for n in rec.notes if n.rule == rule.id)
    assert any(e.metric.endswith(m.metric) for e in note.measurements)


def test_a_measurement_that_does_not_agree_is_a_caution() -> None:
    engine = default_engine()
    rule, m = next(((r, m) for r, m in MEASURED if m.verdict != "agrees"
                    and m.protocol != "fine_tune"), (None, None))
    if rule is None:
        pytest.skip("every classification measurement agrees with the review")
    card = json.loads((SEED / m.card / "card.json").read_text())
    dims = f"{card['spatial_dims']}d"
    rec = engine.recommend(TaskProfile(task="classification", modality=card["modality"],
                                       dimensionality=dims, label_regime="low", top_k=100))
    method = next(r for r in rec.recommendations if r.id == m.method)
    caution = {e.id for e in method.cautions if e.source == "project"}
    assert any(e.startswith(f"project:{m.card}#{m.protocol}@") for e in caution)
    assert not caution & {e.id for e in method.supports}
