"""LC25000 lung tiles as a pipeline check for histopathology (issue 14, item 3): the rules'
plan (stain jitter among the views) pretrains on real H&E RGB tiles and the protocol v2
probe learns from its features. Never a claim: LC25000's splits share near-duplicates, so
its scores say the pipeline runs, not how well a method works."""

from __future__ import annotations

import math

import pytest
import torch

from tests.utils import DATA_DIR
from zoo.architectures import build_encoder
from zoo.datasets.readers import Dataset, Split, load_dataset
from zoo.training.build import Recipe, plan_from_rules
from zoo.training.pretext.registry import build_objective
from zoo.training.protocol import ProtocolV2, evaluate_v2
from zoo.training.train import TrainConfig, pretrain


@pytest.fixture(scope="module")
def lung() -> Dataset:
    if not (DATA_DIR / "extra" / "lc25000lung_64.npz").exists():
        pytest.skip("lc25000lung_64 not found (see shared/data/README.md)")
    full = load_dataset("lc25000lung_64", DATA_DIR)
    assert "near-duplicates" in full.info["caveat"]  # stated with the data
    cut = {"train": 300, "val": 90, "test": 150}
    gen = torch.Generator().manual_seed(0)
    splits = {}
    for name, split in full.splits.items():
        idx = torch.randperm(len(split), generator=gen)[:cut[name]]
        splits[name] = Split(split.images[idx], split.labels[idx])
    return Dataset(name=full.name, info=full.info, splits=splits)


def test_histopathology_plan_pretrains_and_its_probe_learns(lung: Dataset) -> None:
    recipe = Recipe(name="resnet18-2d.simclr-lc25000", method="simclr",
                    dataset="lc25000lung_64", architecture="resnet18-2d",
                    profile={"task": "classification", "modality": "histopathology",
                             "label_regime": "low"})
    plan = plan_from_rules(recipe, lung.channels)
    assert "stain_jitter" in plan.policy.ops and "rotation_90" in plan.policy.ops
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", 2, 3, lung.image_size, recipe.architecture["args"])
    history = pretrain(build_objective("simclr", encoder, **plan.hyperparameters),
                       lung.splits["train"].images, plan.policy,
                       TrainConfig(epochs=1, batch_size=64, max_steps=4))
    assert math.isfinite(history[-1]["loss"])
    rows = evaluate_v2({"ssl": [encoder.eval()]}, lung.splits["train"], lung.splits["val"],
                       lambda: lung.splits["test"], 3, lung.name,
                       ProtocolV2(fractions=[1.0], subset_seeds=[0],
                                  protocols=["linear_probe"], bootstrap=100),
                       log=lambda _: None)
    (row,) = rows
    assert row["acc"] > row["majority_rate"] + 0.1 and row["auc"] > 0.7
