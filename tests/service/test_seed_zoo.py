"""The shipped seed zoo: registered at start-up on a fresh home, with honest cards."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from zoo.training.build import load_recipes, seed_folders

SEEDS = seed_folders()


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
    finally:
        server.stop()


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
