"""The shipped seed zoo: registered at start-up on a fresh home, with honest cards."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from zoo.cards import EncoderCard
from zoo.training.build import (
    PINS,
    SEED_DIR,
    load_recipes,
    pin_mismatches,
    read_pins,
    register_seed_zoo,
    seed_folders,
)

SEEDS = seed_folders()
ROOT = Path(__file__).resolve().parents[2]


def v2_cards() -> list[dict]:
    cards = [json.loads((p / "card.json").read_text()) for p in SEEDS]
    return [c for c in cards if any(e.get("protocol_version") == 2 for e in c["evaluation"])]


def test_seed_files_fit_the_repository_budget() -> None:
    if not SEEDS:
        pytest.skip("no seed encoders built yet (taskalign zoo build)")
    sizes = [(p / "model.safetensors").stat().st_size for p in SEEDS]
    assert max(sizes) < 8 * 1024 * 1024
    assert sum(sizes) < 60 * 1024 * 1024


def test_every_seed_card_reports_its_random_init_baseline() -> None:
    if not SEEDS:
        pytest.skip("no seed encoders built yet")
    recipes = {r.name: r for _, r in load_recipes()}
    for folder in SEEDS:
        card = json.loads((folder / "card.json").read_text())
        assert card["name"] in recipes
        protocols = {(e["protocol"], e["label_fraction"], e["metric"])
                     for e in card["evaluation"]}
        if recipes[card["name"]].profile["task"] == "segmentation":
            # Segmentation encoders: a U-Net from them against one from random weights,
            # test Dice over three training seeds at 10 % and 100 % of the masks.
            for fraction in (0.1, 1.0):
                assert ("fine_tune", fraction, "DICE") in protocols
                assert ("random_init_fine_tune", fraction, "DICE") in protocols
            assert all(len(e["seeds"]) >= 3 and e["spread"] is not None
                       for e in card["evaluation"])
            continue
        assert ("linear_probe", 0.1, "AUC") in protocols
        assert ("random_init_linear_probe", 0.1, "AUC") in protocols


def test_every_seed_file_is_pinned() -> None:
    """SHA256SUMS pins each shipped card and weights file, and names nothing that is gone."""
    pins = read_pins(SEED_DIR)
    for folder in SEEDS:
        assert pin_mismatches(folder, pins) == [], folder.name
    for name in pins:
        assert (SEED_DIR / name).exists(), f"{PINS} pins {name}, which is not shipped"


def test_a_seed_that_does_not_match_its_pin_is_not_registered(tmp_path: Path) -> None:
    from service.config import Settings
    from service.db import make_engine
    from service.migrate import upgrade
    from zoo.local import local_registry

    if len(SEEDS) < 2:
        pytest.skip("needs two seed encoders")
    root = tmp_path / "seed"
    root.mkdir()
    good, bad = SEEDS[0], SEEDS[1]
    for folder in (good, bad):
        shutil.copytree(folder, root / folder.name)
    shutil.copy(SEED_DIR / PINS, root / PINS)
    weights = root / bad.name / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    home = tmp_path / "home"
    home.mkdir()
    engine = make_engine(Settings(home=home))
    upgrade(engine)
    engine.dispose()
    refused: list[str] = []
    with local_registry(home) as registry:
        added = register_seed_zoo(registry, root, log=refused.append)
    good_name = json.loads((good / "card.json").read_text())["name"]
    assert added == [f"taskalign/{good_name}"]
    assert len(refused) == 1 and "does not match its pinned sha256" in refused[0]


def test_classification_recipes_follow_protocol_v2() -> None:
    for _, recipe in load_recipes():
        if not recipe.evaluate.protocols:
            continue
        assert len(recipe.evaluate.pretrain_seeds or []) >= 3, recipe.name
        assert len(recipe.evaluate.inits) >= 3, recipe.name


def test_v2_cards_report_every_metric_interval_and_choice() -> None:
    cards = v2_cards()
    if not cards:
        pytest.skip("no seed encoder rebuilt with protocol v2 yet")
    for card in cards:
        assert card["evaluation_protocol"]["version"] == 2
        assert len(card["lineage"]["pretrain_seeds"]) >= 3
        assert card["pretext"]["hyperparameters"]["train"]["device"] in {"cpu", "cuda"}
        cells: dict[tuple[str, float], set[str]] = {}
        for e in card["evaluation"]:
            assert e["protocol_version"] == 2 and e["split"] == "test"
            assert e["majority_rate"] is not None and e["runs"] >= 3
            assert len(e["replicates"]) >= 3
            cells.setdefault((e["protocol"], e["label_fraction"]), set()).add(e["metric"])
            if e["protocol"].endswith(("linear_probe", "knn")):
                assert e["tuned"]["name"] in {"weight_decay", "k"}
                assert set(e["tuned"]["chosen"]) <= set(e["tuned"]["grid"])
            ssl_auc = e["metric"] == "AUC" and not e["protocol"].startswith("random_init")
            assert (e["difference_ci95"] is not None) == ssl_auc
        assert all(m == {"AUC", "ACC", "BALANCED_ACC"} for m in cells.values()), card["name"]


def test_evidence_write_up_is_generated_from_the_cards() -> None:
    from zoo.evidence_report import load_cards, render

    doc = ROOT / "docs" / "seed-zoo-evidence.md"
    assert doc.read_text() == render(load_cards(SEED_DIR)), (
        "docs/seed-zoo-evidence.md is stale: run `taskalign zoo report`")
    text = doc.read_text()
    for card in v2_cards():
        assert f"## {card['name']}" in text


def test_fresh_server_registers_the_seed_zoo(tmp_path: Path) -> None:
    if not SEEDS:
        pytest.skip("no seed encoders built yet")
    server = Server(tmp_path, TASKALIGN_SEED_ZOO="true")
    try:
        deadline = time.monotonic() + 300
        count = 0
        while time.monotonic() < deadline:
            count = httpx.get(f"{server.url}/v1/encoders").json()["count"]
            if count == len(SEEDS):
                break
            time.sleep(1)
        assert count == len(SEEDS)
        listed = httpx.get(f"{server.url}/v1/encoders", params={"limit": 100}).json()["data"]
        assert {e["method_id"] for e in listed} >= {"simclr"}
        # seed encoders are the organisation's public repositories, taskalign/<card name>
        assert {(e["owner"], e["private"]) for e in listed} == {("taskalign", False)}
        names = {json.loads((p / "card.json").read_text())["name"] for p in SEEDS}
        assert {e["name"] for e in listed} == {f"taskalign/{n}" for n in names}
        check_complete_download(server.url, SEEDS[0], tmp_path / "hf")
    finally:
        server.stop()


def check_complete_download(url: str, folder: Path, cache: Path) -> None:
    """Through the real huggingface_hub client a seed encoder arrives whole: the pinned
    weights, its card as config.json with the sha256 of every file, a README and ONNX."""
    from huggingface_hub import snapshot_download

    card = json.loads((folder / "card.json").read_text())
    got = Path(snapshot_download(f"taskalign/{card['name']}", endpoint=f"{url}/hf",
                                 cache_dir=cache))
    files = {p.name for p in got.iterdir()}
    assert {"config.json", "model.safetensors", "model.onnx", "README.md"} <= files
    weights = hashlib.sha256((got / "model.safetensors").read_bytes()).hexdigest()
    assert weights == read_pins(SEED_DIR)[f"{folder.name}/model.safetensors"]
    served = json.loads((got / "config.json").read_text())
    # config.json and README.md are rendered from the card, so the card cannot hash them;
    # the commit id is the hash over all four.
    for name in ("model.safetensors", "model.onnx"):
        digest = hashlib.sha256((got / name).read_bytes()).hexdigest()
        assert served["files"][name]["sha256"] == digest, name
    declared = EncoderCard.model_validate(card).model_dump(mode="json")
    assert served["evaluation"] == declared["evaluation"]
    assert "## Evaluation" in (got / "README.md").read_text()


def test_zoo_build_leaves_segmentation_seeds_to_their_study(tmp_path: Path) -> None:
    """Rebuilding a segmentation seed with `taskalign zoo build` would drop the U-Net study
    its card carries: the command skips it, says why, and writes nothing."""
    import os
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "zoo", "build",
         "resnet18-2d.dense-contrast-kvasirseg", "--out", str(tmp_path), "--no-register"],
        env={**os.environ, "TASKALIGN_HOME": str(tmp_path / "home"), "COLUMNS": "200"},
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "skipped resnet18-2d.dense-contrast-kvasirseg" in out.stdout
    assert "bench/seg_study.py" in out.stdout
    assert not any(tmp_path.glob("*/card.json"))
