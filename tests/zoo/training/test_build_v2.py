"""`taskalign zoo build` under protocol v2 (issue 14): several pretraining seeds against
several random inits, and the same recipe built twice gives the same card numbers, which
is what lets a reviewer reproduce a shipped card."""

from __future__ import annotations

import json
from pathlib import Path

from zoo.training.build import PINS, build, card_differences, load_recipes, read_pins


def tiny_recipe():  # noqa: ANN201
    _, recipe = load_recipes(["moco-breastmnist"])[0]
    plan = recipe.evaluate.model_copy(update={
        "fractions": [0.1, 1.0], "seeds": [0, 1], "protocols": ["linear_probe", "knn"],
        "pretrain_seeds": [0, 1], "inits": [0, 1], "bootstrap": 200})
    return recipe.model_copy(update={"train": {**recipe.train, "max_steps": 2},
                                     "evaluate": plan})


def test_build_is_reproducible_and_reports_protocol_v2(tmp_path: Path) -> None:
    recipe = tiny_recipe()
    first = build(recipe, tmp_path / "a", log=lambda _: None)
    second = build(recipe, tmp_path / "b", log=lambda _: None)
    card = json.loads((first / "card.json").read_text())
    again = json.loads((second / "card.json").read_text())
    assert card["evaluation"] == again["evaluation"]
    assert card_differences(card, again) == []  # what `zoo build --check` reports
    moved = json.loads(json.dumps(again))
    moved["evaluation"][0]["value"] += 0.01
    moved["evaluation"].pop()
    diffs = card_differences(card, moved)
    assert len(diffs) == 2 and "value: shipped" in diffs[0] + diffs[1]
    assert any("only in the shipped card" in d for d in diffs)
    assert len(card_differences(card, moved, tolerance=0.02)) == 1
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()

    rows = card["evaluation"]
    # 2 arms x 2 protocols x 2 fractions x 3 metrics
    assert len(rows) == 24
    ssl = [r for r in rows if r["protocol"] == "linear_probe" and r["metric"] == "AUC"]
    assert all(r["replicates"] == [0, 1] and r["runs"] == 4 for r in ssl)
    assert all(r["difference_ci95"][0] <= r["difference_ci95"][1] for r in ssl)
    assert card["lineage"]["pretrain_seeds"] == [0, 1]
    assert card["evaluation_protocol"]["linear_probe"]["weight_decay_grid"]
    train = card["pretext"]["hyperparameters"]["train"]
    assert train["device"] == "cpu" and train["cpu_threads"] >= 1 and train["torch"]
    # The folder is pinned as it is written.
    pins = read_pins(first.parent)
    assert set(pins) == {f"{first.name}/{f}" for f in ("card.json", "model.safetensors",
                                                        "metrics.jsonl")}
    assert (first.parent / PINS).read_text().count("\n") == 3
